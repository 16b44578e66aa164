"""runvisor.http.openapi and routes: a valid OpenAPI 3.1 document that matches the route table
and the response models."""

from __future__ import annotations

import copy
import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec

from runvisor.http import legacy_responses, node_responses, responses
from runvisor.http.auth import Role
from runvisor.http.openapi import build_openapi
from runvisor.http.routes import REQUIRED_ROLES, ROUTE_TABLE, ROUTES
from runvisor.models import AuditEntry
from runvisor.procs.isolation import RunIsolation
from runvisor.procs.run_user import RunUser
from tests.schema_tools import closed

# The routes of the README's Routes table, each with the role it needs.
EXPECTED = {
    ("POST", "/api/v1/commands"): Role.ADMIN,
    ("GET", "/api/v1/commands"): Role.VIEWER,
    ("GET", "/api/v1/commands/{id}"): Role.VIEWER,
    ("DELETE", "/api/v1/commands/{id}"): Role.ADMIN,
    ("POST", "/api/v1/commands/{id}/runs"): Role.OPERATOR,
    ("GET", "/api/v1/runs"): Role.VIEWER,
    ("GET", "/api/v1/runs/{id}"): Role.VIEWER,
    ("GET", "/api/v1/runs/{id}/output"): Role.VIEWER,
    ("GET", "/api/v1/runs/{id}/events"): Role.VIEWER,
    ("POST", "/api/v1/runs/{id}/stop"): Role.OPERATOR,
    ("GET", "/api/v1/audit"): Role.ADMIN,
    ("GET", "/api/v1/nodes"): Role.VIEWER,
    ("GET", "/api/v1/nodes/{id}"): Role.VIEWER,
    ("POST", "/api/v1/nodes/{id}/drain"): Role.ADMIN,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/api/v1/openapi.json"): None,
    ("GET", "/metrics"): Role.VIEWER,
    ("POST", "/command"): Role.ADMIN,
    ("GET", "/command/{id}"): Role.VIEWER,
    ("GET", "/commands"): Role.VIEWER,
    ("GET", "/command/exec/{id}"): Role.OPERATOR,
    ("GET", "/command/result/{id}"): Role.VIEWER,
    ("GET", "/command/stop/{id}"): Role.OPERATOR,
    ("GET", "/ping"): Role.VIEWER,
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_openapi(version="1.2.3")


def operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validate_spec(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] == "1.2.3"


def test_the_document_is_json_and_deterministic(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc)) == doc
    assert build_openapi(version="1.2.3") == doc
    assert "$defs" not in json.dumps(doc)  # nested models were hoisted into components


def test_routes_match_the_document_and_the_design(doc: dict[str, Any]) -> None:
    assert len(ROUTES) == len(set(ROUTES))
    assert len({op for _, _, op in ROUTES}) == len(ROUTES)
    assert {(m, p) for m, p, _ in ROUTES} == set(EXPECTED)
    ops = operations(doc)
    assert {(m, p, o) for o, (m, p, _) in ops.items()} == set(ROUTES)
    for method, path, op_id in ROUTES:
        assert REQUIRED_ROLES[op_id] == EXPECTED[(method, path)], op_id
        legacy = op_id.startswith("legacy")
        assert ops[op_id][2]["tags"] == ["legacy" if legacy else "v1"], op_id
        assert legacy == (not path.startswith(("/api/", "/healthz", "/readyz", "/metrics")))


def test_security(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["tokenHeader"] == {"type": "apiKey", "in": "header", "name": "token"}
    assert doc["security"] == [{"bearer": []}, {"tokenHeader": []}]
    for op_id, (_, _, op) in operations(doc).items():
        role = REQUIRED_ROLES[op_id]
        if role is None:
            assert op["security"] == [], op_id
            assert "401" not in op["responses"]
        else:
            assert "security" not in op  # the document-wide requirement applies
            assert op["x-required-role"] == role.name.lower()
            assert {"401", "403", "503"} <= set(op["responses"]), op_id


def test_status_codes(doc: dict[str, Any]) -> None:
    for op_id, (_, path, op) in operations(doc).items():
        codes = set(op["responses"])
        if "{id}" in path:
            assert {"400", "404"} <= codes, op_id
            (param,) = [p for p in op["parameters"] if p["in"] == "path"]
            assert param["name"] == "id" and param["required"] is True
            # A node's id is its RUNVISOR_NODE_ID; every other id is a positive integer.
            node = path.startswith("/api/v1/nodes/")
            assert param["schema"]["type"] == ("string" if node else "integer"), op_id
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= codes, op_id
        if op_id in ("deleteCommand", "stopRun", "legacyStopRun", "drainNode"):
            assert "409" in codes
        # The reads that stream output share a cap: 429 past it (RUNVISOR_MAX_OUTPUT_STREAMS);
        # so do the reads that wait for a run's end (run_waits.MAX_RUN_WAITS).
        # Live streams have their own cap (RUNVISOR_MAX_LIVE_STREAMS_PER_TOKEN).
        expensive = op_id in (
            "getRunOutput",
            "legacyGetCommand",
            "legacyGetResult",
            "getRun",
            "getRunEvents",
        )
        assert ("429" in codes) == expensive, op_id
        ok = [c for c in codes if c.startswith("2")]
        # An ended run's events answer 204 to a reconnect at its end (EventSource stops).
        assert len(ok) == (2 if op_id == "getRunEvents" else 1), op_id
        legacy = op["tags"] == ["legacy"]
        for code in codes - set(ok):
            if op_id == "readyz":
                continue  # its 503 is a Readiness body, not an error
            prefix = "LegacyError" if legacy else "Error"
            assert op["responses"][code]["$ref"].endswith(f"/{prefix}{code}"), (op_id, code)
    by_id = operations(doc)
    assert set(by_id["createCommand"][2]["responses"]) >= {"201"}
    assert "Location" in by_id["createCommand"][2]["responses"]["201"]["headers"]
    assert "Location" in by_id["startRun"][2]["responses"]["202"]["headers"]
    assert set(by_id["deleteCommand"][2]["responses"]) >= {"204"}
    assert "202" in by_id["stopRun"][2]["responses"]
    assert "503" in by_id["readyz"][2]["responses"]
    for name in ("Error429", "LegacyError429"):
        too_many = doc["components"]["responses"][name]
        assert too_many["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        assert "RUNVISOR_MAX_OUTPUT_STREAMS" in too_many["description"]
    output = by_id["getRunOutput"][2]["responses"]["200"]
    assert "text/plain" in output["content"]
    assert {"X-Output-Bytes", "X-Output-Offset", "X-Run-Status"} <= set(output["headers"])
    assert set(by_id["getMetrics"][2]["responses"]["200"]["content"]) == {"text/plain"}


def test_request_bodies(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    expected = {
        "createCommand": ("CommandIn", True),
        "startRun": ("RunIn", False),
        "stopRun": ("StopIn", False),
        "drainNode": ("DrainIn", False),
        "legacyCreateCommand": ("LegacyCommandIn", True),
    }
    for op_id, (_, _, op) in ops.items():
        body = op.get("requestBody")
        if op_id not in expected:
            assert body is None, op_id
            continue
        name, required = expected[op_id]
        assert body["required"] is required
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"
        }
    schemas = doc["components"]["schemas"]
    assert schemas["CommandIn"]["required"] == ["code"]
    assert schemas["CommandIn"]["additionalProperties"] is False
    assert schemas["RestartIn"]["properties"]["policy"]["enum"] == ["never", "on-failure", "always"]


def test_query_parameters(doc: dict[str, Any]) -> None:
    ops = operations(doc)

    def params(op_id: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in ops[op_id][2].get("parameters", []) if p["in"] == "query"}

    assert set(params("listCommands")) == {"limit", "offset"}
    assert params("listCommands")["limit"]["schema"]["maximum"] == 1000
    assert params("listCommands")["limit"]["schema"]["minimum"] == 1
    assert params("listCommands")["offset"]["schema"]["minimum"] == 0
    assert set(params("listRuns")) == {"command_id", "status", "limit", "offset"}
    assert set(params("getRunOutput")) == {"offset", "limit", "follow"}
    assert params("getRunOutput")["follow"]["schema"]["type"] == "boolean"
    assert set(params("getRunEvents")) == {"offset"}
    events = operations(doc)["getRunEvents"][2]
    (header,) = [p for p in events["parameters"] if p["in"] == "header"]
    assert header["name"] == "Last-Event-ID" and header["schema"]["minimum"] == 0
    assert set(events["responses"]["200"]["content"]) == {"text/event-stream"}
    assert params("legacyListCommands")["limit"]["schema"]["default"] == 10
    audit = params("listAudit")
    assert set(audit) == {"action", "actor", "role", "command_id", "run_id", "limit", "offset"}
    assert audit["role"]["schema"]["enum"] == ["viewer", "operator", "admin", "node"]
    assert audit["action"]["schema"]["maxLength"] == 200
    small = operations(build_openapi(version="x", max_page_limit=20))
    limit = next(p for p in small["listRuns"][2]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 20 and limit["schema"]["default"] <= 20


# ---- the response schemas describe exactly what the response models build ------------------


def _records() -> Any:
    """make_command and make_run of the sibling test_responses.py, whatever pytest's import mode."""
    path = Path(__file__).with_name("test_responses.py")
    spec = importlib.util.spec_from_file_location("_runvisor_test_responses", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_command, module.make_run


def make_audit(actor: str) -> AuditEntry:
    return AuditEntry(
        id=1,
        at=datetime(2024, 5, 1, tzinfo=UTC),
        actor=actor,
        action="run.stop",
        command_id=None,
        run_id=2,
        detail={"grace_s": 1.0},
    )


def check_shape(doc: dict[str, Any], name: str, instance: Any) -> None:
    strict = closed(copy.deepcopy(doc))
    root = {"components": strict["components"], "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(
        instance
    )


def test_response_shapes_match_the_models(doc: dict[str, Any]) -> None:
    make_command, make_run = _records()
    from runvisor.errors import NotFound, Unprocessable
    from runvisor.models import RunStatus

    R, L = responses, legacy_responses
    command, run = make_command(), make_run()
    check_shape(doc, "Command", R.Command.of(command).to_json())
    check_shape(doc, "Run", R.Run.of(run).to_json())
    queued = make_run(status=RunStatus.QUEUED, attempts=[], pid=None)
    check_shape(doc, "Run", R.Run.of(queued).to_json())
    page = R.CommandPage(items=[R.Command.of(command)], limit=1, offset=0, total=1)
    check_shape(doc, "CommandPage", page.to_json())
    check_shape(
        doc, "RunPage", R.RunPage(items=[R.Run.of(run)], limit=1, offset=0, total=1).to_json()
    )
    check_shape(doc, "Error", R.Error.of(NotFound("nope")).to_json())
    exc = Unprocessable("code: must not be blank")
    exc.details = [{"field": "code", "message": "must not be blank", "type": "value_error"}]  # type: ignore[attr-defined]
    check_shape(doc, "Error", R.Error.of(exc).to_json())
    check_shape(doc, "LegacyCommand", L.LegacyCommand.of(command).to_json())
    latest = L.LegacyCommand.of(command, latest_run=run, latest_output=b"x")
    check_shape(doc, "LegacyCommand", latest.to_json())
    check_shape(doc, "LegacyRun", L.LegacyRun.of(run, command, b"out").to_json())
    check_shape(doc, "LegacyRun", L.LegacyRun.of(run, command, None).to_json())
    check_shape(doc, "LegacyError", R.LegacyError.of(NotFound("nope")).to_json())
    tail = L.LegacyRun.of(run, command, b"end", skipped=10).to_json()
    check_shape(doc, "LegacyRun", tail)
    marker = L.LEGACY_RESULT_MARKER.format(skipped="N", run_id="ID")
    assert (
        marker.strip()
        in doc["components"]["schemas"]["LegacyRun"]["properties"]["result"]["description"]
    )
    entries = [
        R.AuditEntry.of(make_audit(actor)) for actor in ("admin:ed626e10", "node:vm", "someone")
    ]
    audit_page = R.AuditEntryPage(items=entries, limit=50, offset=0, total=3).to_json()
    check_shape(doc, "AuditEntryPage", audit_page)
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "AuditEntry", {**audit_page["items"][0], "role": "root"})
    check_shape(doc, "Health", R.Health(status="ok").to_json())
    isolation = RunIsolation(
        run_user=RunUser(65534, 65534, "nobody", "/nonexistent", "/usr/bin/setpriv"),
        cgroups=None,
        no_cgroup_reason="no cgroup v2 hierarchy is mounted",
    )
    down = R.Readiness(
        status="unavailable",
        stores={"postgres": "ok", "redis": "down: refused"},
        runs=R.Isolation.model_validate(isolation.describe()),  # refuses a field it lacks
    )
    check_shape(doc, "Readiness", down.to_json())
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "Command", {**R.Command.of(command).to_json(), "surprise": 1})
    without_env_keys = {k: v for k, v in R.Run.of(run).to_json().items() if k != "env_keys"}
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "Run", without_env_keys)
    # env and limits: declared names with a default or null; limits by name, none required.
    check_shape(doc, "Command", R.Command.of(make_command(env={}, limits={})).to_json())
    check_shape(doc, "Run", R.Run.of(make_run(limits={})).to_json())
    for bad in ({"limits": {"cpu": 0}}, {"limits": {"rss": 1}}, {"env": {"A": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            check_shape(doc, "Command", {**R.Command.of(command).to_json(), **bad})
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "Run", {**R.Run.of(run).to_json(), "limits": {"nproc": "lots"}})
    # Fields left out when empty are never documented as null.
    for name, field in (("LegacyRun", "result"), ("LegacyCommand", "last_run_id")):
        with pytest.raises(jsonschema.ValidationError):
            check_shape(doc, name, {**L.LegacyRun.of(run, command, b"x").to_json(), field: None})


def _response_models() -> list[type[responses.ResponseModel]]:
    """Every concrete response model of the two modules (not the base classes)."""
    found = []
    for module in (responses, legacy_responses, node_responses):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, responses.ResponseModel)
                and value.__module__ == module.__name__
                and value not in (responses.ResponseModel, responses.Page)
                and value.__pydantic_generic_metadata__["origin"] is None  # not Page[Run]
            ):
                found.append(value)
    return found


def test_every_response_schema_is_generated_from_a_response_model(doc: dict[str, Any]) -> None:
    """No hand-written response schema: each component is a request model, a response model
    or an enum one of them uses, and each response model's is closed (additionalProperties
    false), so a body with a field its model lacks fails schemathesis' response check."""
    schemas = doc["components"]["schemas"]
    models = {model.__name__: model for model in _response_models()}
    requests = {r.body.__name__ for r in ROUTE_TABLE if r.body is not None}
    nested_requests = {"RestartIn", "LimitsIn"}
    enums = {"RunStatus", "RestartPolicyKind"}
    assert set(schemas) == set(models) | requests | nested_requests | enums
    assert not set(models) & (requests | nested_requests)
    for name, model in models.items():
        assert model.model_config.get("extra") == "forbid", name
        assert schemas[name]["additionalProperties"] is False, name
        assert schemas[name]["type"] == "object", name
        assert not any("default" in p for p in schemas[name]["properties"].values()), name
    for name in enums:
        assert set(schemas[name]) >= {"enum", "type"}, name


def test_every_route_documents_the_model_it_answers_with(doc: dict[str, Any]) -> None:
    for route in ROUTE_TABLE:
        for code, reply in route.replies.items():
            answer = doc["paths"][route.path][route.method.lower()]["responses"][str(code)]
            assert answer["description"] == reply.description
            if isinstance(reply.body, type) and issubclass(reply.body, responses.ResponseModel):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{reply.body.__name__}"}
            elif reply.body is None:
                assert "content" not in answer, route.operation_id


def test_request_schemas_accept_what_the_models_accept(doc: dict[str, Any]) -> None:
    body = {
        "code": "echo",
        "name": "n",
        "timeout_s": 1,
        "restart": {"policy": "always", "window_s": 5},
    }
    check_shape(doc, "CommandIn", body)
    check_shape(doc, "RunIn", {"env": {"A": "1"}, "restart": None})
    check_shape(doc, "StopIn", {"grace_s": 0})
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "RunIn", {"env": {"RUNVISOR_X": "1"}})
    with pytest.raises(jsonschema.ValidationError):
        check_shape(doc, "RunIn", {"env": {"1A": "1"}})
    declared = {"GREETING": "hello", "TARGET": None}
    limits = {"cpu": 10, "as": "unlimited", "fsize": 2**62, "nofile": None}
    check_shape(doc, "CommandIn", {"code": "echo", "env": declared, "limits": limits})
    # Names that change what runs are refused by the document too, in both places.
    for name in ("BASH_ENV", "LD_PRELOAD", "PATH", "LC_ALL", "GIT_PAGER", "Http_Proxy"):
        with pytest.raises(jsonschema.ValidationError):
            check_shape(doc, "RunIn", {"env": {name: "x"}})
        with pytest.raises(jsonschema.ValidationError):
            check_shape(doc, "CommandIn", {"code": "echo", "env": {name: None}})
    for bad_limits in ({"cpu": 0}, {"as": 2**62 + 1}, {"nproc": "5"}, {"rss": 1}):
        with pytest.raises(jsonschema.ValidationError):
            check_shape(doc, "CommandIn", {"code": "echo", "limits": bad_limits})
