"""The OpenAPI 3.1 document of every route, v1 and legacy (pure: built from the route table).

Request schemas come from the request models, response schemas from the response models, and
the operations from routes.ROUTE_TABLE: nothing here describes a body by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from runvisor.http.params import (
    AUDIT_ROLES,
    DEFAULT_PAGE_LIMIT,
    LEGACY_PAGE_LIMIT,
    MAX_FILTER_CHARS,
    MAX_ID,
)
from runvisor.http.responses import Error, LegacyError
from runvisor.http.routes import ROUTE_TABLE, Reply, Route
from runvisor.http.run_waits import MAX_WAIT_S
from runvisor.models import RunStatus
from runvisor.placement import NODE_ID_PATTERN

_REF = "#/components/schemas/{model}"
_STATUS_FILTER = {"type": "string", "enum": [*(str(s) for s in RunStatus), "active", "terminal"]}

_ERRORS = {
    400: "Malformed request: invalid JSON, id or query parameter. A request whose HTTP framing"
    " cannot be parsed (a request line or header over 8190 bytes) is refused by the HTTP layer"
    " before the service sees it, with a plain-text body",
    401: "No token, or an unknown one",
    403: "The token's role may not do this",
    404: "No such command, run or node",
    409: "Conflicts with the current state",
    413: "The request body is too large (RUNVISOR_MAX_BODY_BYTES)",
    415: "The body is not application/json",
    422: "The body is valid JSON but not a valid request; error.details lists each field",
    429: "Too many output reads at once, on this node (RUNVISOR_MAX_OUTPUT_STREAMS) or for this"
    " token (RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN); retry after Retry-After seconds",
    503: "PostgreSQL or Redis cannot be reached; retry later",
}


class _ResponseSchema(GenerateJsonSchema):
    """Response schemas show no defaults: a field that may be left out is simply not required."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def _schema_of(kind: Any) -> JsonSchemaValue:
    """The schema of a plain type (a header's, a text body's)."""
    return TypeAdapter(kind).json_schema(mode="serialization")


def _body_schemas(
    types: Iterable[Any],
) -> tuple[dict[Any, JsonSchemaValue], dict[str, JsonSchemaValue]]:
    """Each response body type -> its schema (a $ref for a model), and the components."""
    mode: JsonSchemaMode = "serialization"
    inputs = [(kind, mode, TypeAdapter(kind)) for kind in dict.fromkeys(types)]
    by_key, defs = TypeAdapter.json_schemas(
        inputs, ref_template=_REF, schema_generator=_ResponseSchema
    )
    return {key: schema for (key, _mode), schema in by_key.items()}, defs.get("$defs", {})


def _request_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for route in ROUTE_TABLE:
        if route.body is None or route.body.__name__ in out:
            continue
        schema = route.body.model_json_schema(ref_template=_REF, mode="validation")
        out.update(schema.pop("$defs", {}))  # nested models (RestartIn) become components
        out[route.body.__name__] = schema
    return out


def _reply(reply: Reply, bodies: dict[Any, JsonSchemaValue]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.body is not None:
        is_json = reply.media_type == "application/json"
        schema = bodies[reply.body] if is_json else _schema_of(reply.body)
        out["content"] = {reply.media_type: {"schema": schema}}
    if reply.headers:
        out["headers"] = {
            name: {"description": text, "schema": _schema_of(kind)}
            for name, (kind, text) in reply.headers.items()
        }
    return out


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
        "wait_s": ("wait_s", {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_S,
                              "default": 0},
                   "answer once the run has ended, or after this many seconds with the run as"
                   " it is then (no polling)"),
        "output_limit": ("limit", {**big, "minimum": 1}, "at most this many bytes"),
        "follow": ("follow", {"type": "boolean", "default": False},
                   "1: stream the bytes (chunked) as the run writes them, until it ends"),
        "events_offset": ("offset", {**big, "default": 0},
                          "the byte offset to start at (Last-Event-ID wins)"),
        "last_event_id": ("Last-Event-ID", {**big},
                          "the id of the last event received: resume just after it"),
        "audit_action": ("action", text, "only this action (exact), e.g. run.stop"),
        "audit_actor": ("actor", text, "only this actor (exact), e.g. admin:ed626e10"),
        "audit_role": ("role", {"type": "string", "enum": list(AUDIT_ROLES)},
                       "only actors of this role; `node`: the service itself"),
        "audit_command_id": ("command_id", {**big, "minimum": 1}, "only entries of this command"),
        "audit_run_id": ("run_id", {**big, "minimum": 1}, "only entries of this run"),
    }
    # fmt: on
    real, schema, description = params[name]
    out = {
        "name": real,
        "in": "header" if name == "last_event_id" else "query",
        "required": False,
        "schema": schema,
        "description": description,
    }
    if schema.get("type") == "array":
        out.update(style="form", explode=False)  # ?status=running,queued
    return out


def _operation(
    route: Route, bodies: dict[Any, JsonSchemaValue], max_page_limit: int
) -> dict[str, Any]:
    prefix = "Legacy" if route.legacy else ""
    tag = "legacy" if route.legacy else "v1"
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [tag],
    }
    params = [_query(q, max_page_limit) for q in route.query]
    errors = set(route.extra_errors)
    if "{id}" in route.path:
        id_schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        if route.path.startswith("/api/v1/nodes/"):  # a node's id is its RUNVISOR_NODE_ID
            id_schema = {"type": "string", "pattern": NODE_ID_PATTERN}
        params.insert(0, {"name": "id", "in": "path", "required": True, "schema": id_schema})
        errors |= {400, 404}
    if route.query:
        errors.add(400)
    if route.body is not None:
        schema = {"$ref": _REF.format(model=route.body.__name__)}
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
    responses = {str(code): _reply(reply, bodies) for code, reply in route.replies.items()}
    for code in sorted(errors):
        responses[str(code)] = {"$ref": f"#/components/responses/{prefix}Error{code}"}
    op["responses"] = responses
    return op


def build_openapi(*, version: str, max_page_limit: int = 1000) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `max_page_limit` is RUNVISOR_MAX_PAGE_LIMIT."""
    body_types = [  # the JSON ones: other media types' schemas are written in place
        reply.body
        for route in ROUTE_TABLE
        for reply in route.replies.values()
        if reply.body and reply.media_type == "application/json"
    ]
    bodies, response_schemas = _body_schemas([*body_types, Error, LegacyError])
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTE_TABLE:
        operation = _operation(route, bodies, max_page_limit)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    responses: dict[str, Any] = {}
    for code, text in _ERRORS.items():
        for name, model in ((f"Error{code}", Error), (f"LegacyError{code}", LegacyError)):
            responses[name] = _reply(Reply(text, model), bodies)
            if code == 400:  # aiohttp's own answer to a request it cannot parse: text/plain
                responses[name]["content"]["text/plain"] = {"schema": _schema_of(str)}
            if code == 429:
                retry = {
                    "description": "seconds to wait before retrying",
                    "schema": {"type": "integer"},
                }
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
            "schemas": {**_request_schemas(), **response_schemas},
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "tokenHeader": {"type": "apiKey", "in": "header", "name": "token"},
            },
        },
        "security": [{"bearer": []}, {"tokenHeader": []}],
    }
