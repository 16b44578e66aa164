"""The OpenAPI 3.1 document of every route, v1 and legacy (pure: built from tables below).

`ROUTES` is the list the app factory registers and a test compares with the real router;
`REQUIRED_ROLES` says which role each operation needs (None: open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from runvisor.http.auth import Role
from runvisor.http.schemas import (
    AUDIT_ROLES,
    DEFAULT_PAGE_LIMIT,
    LEGACY_PAGE_LIMIT,
    LIMIT_SCHEMA,
    MAX_FILTER_CHARS,
    MAX_ID,
    CommandIn,
    LegacyCommandIn,
    RunIn,
    StopIn,
)
from runvisor.http.serialize import LEGACY_RESULT_MARKER
from runvisor.models import LIMIT_NAMES, RunStatus


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    required = [name for name in props if name not in optional]
    return {"type": "object", "properties": props, "required": required}


def _n(kind: str, **extra: Any) -> dict[str, Any]:
    """A nullable scalar (JSON Schema 2020-12 style, as OpenAPI 3.1 wants)."""
    return {"type": [kind, "null"], **extra}


# fmt: off
_INT, _NUM, _STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}
_BOOL = {"type": "boolean"}
_TIME, _NTIME = {"type": "string", "format": "date-time"}, _n("string", format="date-time")
_NINT, _NNUM, _NSTR = _n("integer"), _n("number"), _n("string")
_SIGNAL = _n("integer", description="the terminating signal's number")
_STATUS_FILTER = {"type": "string", "enum": [*(str(s) for s in RunStatus), "active", "terminal"]}
_LEGACY_STATUS = {"type": "string", "enum": ["RUNNING", "COMPLETED", "STOPPED"]}
_ENV_KEYS_TEXT = "names only: values stay secret"
_ERROR_ITEM = _obj({"field": _STR, "message": _STR, "type": _STR})
_ENV_DECLARED = {
    "type": "object", "additionalProperties": _NSTR,
    "description": "the variables a run may set, each with its default value or null (none)",
}
_TAIL_TEXT = (
    "at most RUNVISOR_LEGACY_RESULT_BYTES of it, its end; when bytes before that are left out,"
    " the first line says how many: "
    + repr(LEGACY_RESULT_MARKER.format(skipped="N", run_id="ID"))
)

# Response shapes; serialize.py builds exactly these (tests/http/test_openapi.py checks it).
_RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "RestartPolicy": _obj({
        "policy": {"type": "string", "enum": ["never", "on-failure", "always"]},
        "max_restarts": _INT, "window_s": _NUM, "backoff_s": _NUM, "backoff_max_s": _NUM,
    }),
    "Command": _obj({
        "id": _INT, "name": _NSTR, "code": _STR, "description": _STR, "created_at": _TIME,
        "timeout_s": _NNUM, "stuck_after_s": _NNUM, "restart": _ref("RestartPolicy"),
        "max_output_bytes": _INT, "env": _ENV_DECLARED, "limits": _ref("Limits"),
    }),
    "Limits": {
        **_obj({name: LIMIT_SCHEMA for name in LIMIT_NAMES}, optional=LIMIT_NAMES),
        "description": "resource limits of the runs; a name left out takes the node's default",
    },
    "Attempt": _obj({
        "attempt": _INT, "node": _STR, "pid": _NINT, "started_at": _TIME, "finished_at": _NTIME,
        "exit_code": _NINT, "signal": _SIGNAL, "reason": _NSTR,
        "output_offset": {**_INT, "description": "where this attempt's output begins"},
        "leftovers_killed": {
            **_INT, "description": "processes still running when the attempt ended, killed then",
        },
    }),
    "Run": _obj({
        "id": _INT, "command_id": _INT,
        "status": {"type": "string", "enum": [str(s) for s in RunStatus]},
        "exit_code": _NINT, "signal": _SIGNAL, "reason": _NSTR, "node": _NSTR, "pid": _NINT,
        "attempt": _INT, "restart_count": _INT, "next_attempt_at": _NTIME,
        "attempts": {"type": "array", "items": _ref("Attempt")},
        "created_at": _TIME, "started_at": _NTIME, "finished_at": _NTIME,
        "output_bytes": _INT, "output_truncated": _BOOL,
        "stop_requested_by": _n("string", description="a principal, e.g. operator:1a2b3c4d"),
        "stop_requested_at": _NTIME, "code": _STR, "timeout_s": _NNUM, "stuck_after_s": _NNUM,
        "restart": _ref("RestartPolicy"), "max_output_bytes": _INT, "limits": _ref("Limits"),
        "env_keys": {"type": "array", "items": _STR, "description": _ENV_KEYS_TEXT},
    }),
    "Error": _obj({"error": _obj(
        {"code": _STR, "message": _STR, "details": {"type": "array", "items": _ERROR_ITEM}},
        optional=("details",),
    )}),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Readiness": _obj({
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "stores": {
            "type": "object", "additionalProperties": _STR,
            "description": 'each store (postgres, redis): "ok", or "down: why"',
        },
        "runs": _obj({
            "user": {**_STR, "description": "the user runs execute as (RUNVISOR_RUN_AS)"},
            "uid": _INT,
            "gid": _INT,
            "process_tracking": {
                "type": "string", "enum": ["cgroup", "scan"],
                "description": "cgroup: one cgroup v2 per attempt; scan: /proc scans",
            },
            "cgroup": {"type": ["string", "null"], "description": "this node's cgroup dir"},
            "cgroup_controllers": {"type": "array", "items": _STR},
            "no_cgroup_reason": {"type": ["string", "null"]},
        }),
    }),
    "LegacyCommand": _obj({
        "id": _INT, "code": _STR, "description": _STR, "created_at": _TIME,
        "last_run_id": _INT, "last_run_status": _LEGACY_STATUS,
        "result": {**_STR, "description": f"the latest run's output; {_TAIL_TEXT}"},
    }, optional=("last_run_id", "last_run_status", "result")),
    "LegacyRun": _obj({
        "id": _INT, "command": _ref("LegacyCommand"),
        "completed_at": {**_TIME, "description": "the start time until the run ends"},
        "result": {**_STR, "description": f"the output so far; left out when empty; {_TAIL_TEXT}"},
        "status": _LEGACY_STATUS, "exit_code": _NINT,
    }, optional=("result",)),
    "AuditEntry": _obj({
        "id": _INT, "at": _TIME,
        "actor": {**_STR, "description": "a principal (role:fingerprint) or node:NAME"},
        "role": _n("string", enum=[*(r.label for r in Role), None],
                   description="the token's role; null for a node"),
        "token_fingerprint": _n("string", description="first 8 hex digits of the token's SHA-256"),
        "node": _n("string", description="the node that acted (actor node:NAME), else null"),
        "action": {**_STR, "description": "e.g. command.create, run.create, run.stop, run.failed"},
        "command_id": _NINT, "run_id": _NINT, "detail": {"type": "object"},
    }),
    "LegacyError": _obj({"error": _STR}),
}
for _kind in ("Command", "Run", "AuditEntry"):
    _RESPONSE_SCHEMAS[f"{_kind}Page"] = _obj({
        "items": {"type": "array", "items": _ref(_kind)},
        "limit": _INT, "offset": _INT, "total": _INT,
    })
# fmt: on

_REQUEST_MODELS: tuple[type[BaseModel], ...] = (CommandIn, RunIn, StopIn, LegacyCommandIn)

_ERRORS = {
    400: "Malformed request: invalid JSON, id or query parameter. A request whose HTTP framing"
    " cannot be parsed (a request line or header over 8190 bytes) is refused by the HTTP layer"
    " before the service sees it, with a plain-text body",
    401: "No token, or an unknown one",
    403: "The token's role may not do this",
    404: "No such command or run",
    409: "Conflicts with the current state",
    413: "The request body is too large (RUNVISOR_MAX_BODY_BYTES)",
    415: "The body is not application/json",
    422: "The body is valid JSON but not a valid request; error.details lists each field",
    429: "Too many output reads at once, on this node (RUNVISOR_MAX_OUTPUT_STREAMS) or for this"
    " token (RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN); retry after Retry-After seconds",
    503: "PostgreSQL or Redis cannot be reached; retry later",
}


@dataclass(frozen=True)
class _Route:
    method: str
    path: str
    op: str
    role: Role | None
    summary: str
    ok: dict[int, dict[str, Any]]
    query: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = False
    extra_errors: tuple[int, ...] = ()

    @property
    def legacy(self) -> bool:
        return not self.path.startswith(("/api/", "/healthz", "/readyz", "/metrics"))


def _json(schema: dict[str, Any], text: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": text, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = {k: {"description": v, "schema": _STR} for k, v in headers.items()}
    return out


_LOC = {"Location": "URL of the new resource"}
_OUTPUT = {
    "description": "The output bytes in [offset, offset+limit), exactly as written",
    "content": {"text/plain": {"schema": _STR}},
    "headers": {
        "X-Output-Bytes": {"description": "the run's output bytes stored so far", "schema": _INT},
        "X-Output-Offset": {"description": "the offset of the first byte returned", "schema": _INT},
        "X-Run-Status": {"description": "the run's status", "schema": _STR},
    },
}
_V, _O, _A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
# fmt: off
_TABLE: tuple[_Route, ...] = (
    _Route("POST", "/api/v1/commands", "createCommand", _A, "Create a command",
           {201: _json(_ref("Command"), "Created", **_LOC)}, body=CommandIn, body_required=True),
    _Route("GET", "/api/v1/commands", "listCommands", _V, "List commands, oldest first",
           {200: _json(_ref("CommandPage"), "A page of commands")}, query=("limit", "offset")),
    _Route("GET", "/api/v1/commands/{id}", "getCommand", _V, "Read a command",
           {200: _json(_ref("Command"), "The command")}),
    _Route("DELETE", "/api/v1/commands/{id}", "deleteCommand", _A,
           "Delete a command (its runs stay as history); 409 while it has active runs",
           {204: {"description": "Deleted"}}, extra_errors=(409,)),
    _Route("POST", "/api/v1/commands/{id}/runs", "startRun", _O, "Start a run of a command",
           {202: _json(_ref("Run"), "Accepted: the run is queued", **_LOC)}, body=RunIn),
    _Route("GET", "/api/v1/runs", "listRuns", _V, "List runs, newest first",
           {200: _json(_ref("RunPage"), "A page of runs")},
           query=("command_id", "status", "limit", "offset")),
    _Route("GET", "/api/v1/runs/{id}", "getRun", _V, "Read a run",
           {200: _json(_ref("Run"), "The run")}),
    _Route("GET", "/api/v1/runs/{id}/output", "getRunOutput", _V, "Read a run's output bytes",
           {200: _OUTPUT}, query=("output_offset", "output_limit"), extra_errors=(429,)),
    _Route("POST", "/api/v1/runs/{id}/stop", "stopRun", _O,
           "Stop a run: SIGTERM to all its processes, SIGKILL after grace_s; 409 if finished",
           {202: _json(_ref("Run"), "Accepted: the run is stopping")}, body=StopIn,
           extra_errors=(409,)),
    _Route("GET", "/api/v1/audit", "listAudit", _A, "List the audit log, newest first",
           {200: _json(_ref("AuditEntryPage"), "A page of audit entries")},
           query=("audit_action", "audit_actor", "audit_role", "audit_command_id", "audit_run_id",
                  "limit", "offset")),
    _Route("GET", "/healthz", "healthz", None, "Liveness", {200: _json(_ref("Health"), "Alive")}),
    _Route("GET", "/readyz", "readyz", None, "Readiness: can PostgreSQL and Redis be reached",
           {200: _json(_ref("Readiness"), "Ready"),
            503: _json(_ref("Readiness"), "Not ready: `stores` says which is down")}),
    _Route("GET", "/api/v1/openapi.json", "getOpenapi", None, "This document",
           {200: _json({"type": "object"}, "The OpenAPI document")}),
    # Legacy routes of the original service: same paths and shapes (LEGACY_API.md).
    _Route("POST", "/command", "legacyCreateCommand", _A, "Create a command (legacy)",
           {200: _json(_ref("LegacyCommand"), "The command")}, body=LegacyCommandIn,
           body_required=True),
    _Route("GET", "/command/{id}", "legacyGetCommand", _V,
           "Read a command, with its latest run's output (legacy)",
           {200: _json(_ref("LegacyCommand"), "The command")}, extra_errors=(429,)),
    _Route("GET", "/commands", "legacyListCommands", _V,
           "List commands by created_at (legacy; offset counts rows, not pages)",
           {200: _json({"type": "array", "items": _ref("LegacyCommand")}, "The commands")},
           query=("legacy_limit", "offset")),
    _Route("GET", "/command/exec/{id}", "legacyExecCommand", _O,
           "Start a run of the command {id} (legacy)",
           {200: _json(_ref("LegacyRun"), "The run, normally RUNNING")}),
    _Route("GET", "/command/result/{id}", "legacyGetResult", _V, "Read the run {id} (legacy)",
           {200: _json(_ref("LegacyRun"), "The run; result is the output so far")},
           extra_errors=(429,)),
    _Route("GET", "/command/stop/{id}", "legacyStopRun", _O,
           "Stop the run {id} (legacy); 409 if it has finished",
           {200: _json(_ref("LegacyRun"), "The run, normally STOPPED")}, extra_errors=(409,)),
    _Route("GET", "/ping", "legacyPing", _V, "Ping (legacy)", {200: {"description": "Empty body"}}),
)
# fmt: on

ROUTES: list[tuple[str, str, str]] = [(r.method, r.path, r.op) for r in _TABLE]
REQUIRED_ROLES: dict[str, Role | None] = {r.op: r.role for r in _TABLE}


def _query(name: str, max_page_limit: int) -> dict[str, Any]:
    big = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
    # fmt: off
    text = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_CHARS,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}  # no control characters
    params: dict[str, tuple[str, dict[str, Any], str]] = {
        "limit": ("limit", {"type": "integer", "minimum": 1, "maximum": max_page_limit,
                            "default": min(DEFAULT_PAGE_LIMIT, max_page_limit)}, "page size"),
        "legacy_limit": ("limit", {"type": "integer", "minimum": 1, "maximum": max_page_limit,
                                   "default": LEGACY_PAGE_LIMIT}, "page size"),
        "offset": ("offset", {**big, "default": 0}, "rows to skip"),
        "command_id": ("command_id", {**big, "minimum": 1}, "only this command's runs"),
        "status": ("status", {"type": "array", "minItems": 1, "items": _STATUS_FILTER},
                   "comma-separated statuses, or `active` / `terminal`"),
        "output_offset": ("offset", {**big, "default": 0}, "first byte to return"),
        "output_limit": ("limit", {**big, "minimum": 1}, "at most this many bytes"),
        "audit_action": ("action", text, "only this action (exact), e.g. run.stop"),
        "audit_actor": ("actor", text, "only this actor (exact), e.g. admin:ed626e10"),
        "audit_role": ("role", {"type": "string", "enum": list(AUDIT_ROLES)},
                       "only actors of this role; `node`: the service itself"),
        "audit_command_id": ("command_id", {**big, "minimum": 1}, "only entries of this command"),
        "audit_run_id": ("run_id", {**big, "minimum": 1}, "only entries of this run"),
    }
    # fmt: on
    real, schema, text = params[name]
    out = {"name": real, "in": "query", "required": False, "schema": schema, "description": text}
    if schema.get("type") == "array":
        out.update(style="form", explode=False)  # ?status=running,queued
    return out


def _operation(route: _Route, max_page_limit: int) -> dict[str, Any]:
    prefix = "Legacy" if route.legacy else ""
    tag = "legacy" if route.legacy else "v1"
    op: dict[str, Any] = {"operationId": route.op, "summary": route.summary, "tags": [tag]}
    params = [_query(q, max_page_limit) for q in route.query]
    errors = set(route.extra_errors)
    if "{id}" in route.path:
        id_schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        params.insert(0, {"name": "id", "in": "path", "required": True, "schema": id_schema})
        errors |= {400, 404}
    if route.query:
        errors.add(400)
    if route.body is not None:
        schema = _ref(route.body.__name__)
        content = {"application/json": {"schema": schema}}
        op["requestBody"] = {"required": route.body_required, "content": content}
        errors |= {400, 413, 415, 422}
    if route.role is None:
        op["security"] = []
    else:
        errors |= {401, 403, 503}
        op["x-required-role"] = route.role.label
        op["description"] = f"Needs the `{route.role.label}` role (or a higher one)."
    if params:
        op["parameters"] = params
    responses: dict[str, Any] = {str(code): resp for code, resp in route.ok.items()}
    for code in sorted(errors):
        responses[str(code)] = {"$ref": f"#/components/responses/{prefix}Error{code}"}
    op["responses"] = responses
    return op


def _request_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in _REQUEST_MODELS:
        schema = model.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="validation"
        )
        out.update(schema.pop("$defs", {}))  # nested models (RestartIn) become components
        out[model.__name__] = schema
    return out


def build_openapi(*, version: str, max_page_limit: int = 1000) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `max_page_limit` is RUNVISOR_MAX_PAGE_LIMIT."""
    paths: dict[str, dict[str, Any]] = {}
    for route in _TABLE:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, max_page_limit)
    responses: dict[str, Any] = {}
    for code, text in _ERRORS.items():
        responses[f"Error{code}"] = _json(_ref("Error"), text)
        responses[f"LegacyError{code}"] = _json(_ref("LegacyError"), text)
        if code == 400:  # aiohttp's own answer to a request it cannot parse: text/plain
            for name in (f"Error{code}", f"LegacyError{code}"):
                responses[name]["content"]["text/plain"] = {"schema": _STR}
        if code == 429:
            retry = {"description": "seconds to wait before retrying", "schema": _INT}
            for name in (f"Error{code}", f"LegacyError{code}"):
                responses[name]["headers"] = {"Retry-After": retry}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runvisor",
            "version": version,
            "description": "Runs stored bash commands under supervision. Errors are "
            '`{"error": {"code", "message"}}` (legacy routes: `{"error": "..."}`).',
        },
        "tags": [
            {"name": "v1"},
            {"name": "legacy", "description": "the original service's routes"},
        ],
        "paths": paths,
        "components": {
            "schemas": {**_request_schemas(), **_RESPONSE_SCHEMAS},
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "tokenHeader": {"type": "apiKey", "in": "header", "name": "token"},
            },
        },
        "security": [{"bearer": []}, {"tokenHeader": []}],
    }
