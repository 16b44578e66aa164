"""The OpenAPI document at /api/v1/openapi.json matches what a live node does.

1. The routes: the app's real aiohttp router, `routes.ROUTES` and the served document name the
   same (method, path, operationId) triples; every documented route answers on a live node.
2. Schemathesis generates requests from the served document (its examples, coverage and fuzzing
   phases, valid and invalid data) and sends them to a live node with an admin token; every
   answer must be a documented status code and content type, with headers and a body that match
   the documented schemas, and never a 5xx.

Generated requests reach a service that runs bash. Nothing generated may ever be run:
- `harmless()` rewrites every request body before it is sent: any `code` key (in any letter
  case: the legacy route matches field names case-insensitively, as Go did) gets one of
  SAFE_CODES, every valid `env` name gets the RVT_ prefix (so BASH_ENV, PS4, SHELLOPTS, PATH,
  LD_PRELOAD and the like can never be set), and restart counts are capped;
- `GuardAdapter` is the last check, on the bytes that actually leave the client: a request
  whose body holds a `code` outside SAFE_CODES or an env name outside RVT_ is refused (the
  test fails) before it is sent;
- commands can only be created through the two guarded routes, the database is fresh for each
  test, and at the end every run the node made is checked to have run one of SAFE_CODES.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator, FormatChecker
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from runvisor import __version__
from runvisor.config import Settings
from runvisor.http.app import create_app
from runvisor.http.auth import parse_tokens
from runvisor.http.openapi import build_openapi
from runvisor.http.routes import ROUTES
from tests.fix_service import ADMIN, TOKENS, VIEWER, Service
from tests.schema_tools import closed

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# ---- 1. routes: router, route table and document agree -------------------------------------


def router_routes() -> set[tuple[str, str, str]]:
    """(method, path, name) of every route of the real app; HEAD (added for GET) left out."""
    app = create_app(
        Settings(),
        supervisor=cast(Any, None),  # only stored by the factory; nothing here runs
        tokens=parse_tokens(TOKENS),
        database_url="postgresql://unused",
        redis_url="redis://unused",
        isolation=cast(Any, None),
    )
    return {
        (route.method, cast(str, route.resource.canonical), cast(str, route.name))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def document_routes(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (method.upper(), path, op["operationId"])
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def test_every_served_route_is_documented_and_every_documented_route_is_served(
    service: Service,
) -> None:
    served = router_routes()
    table = set(ROUTES)
    live_doc = service.api.get("/api/v1/openapi.json", token="").json()
    assert live_doc == build_openapi(version=live_doc["info"]["version"])
    documented = document_routes(live_doc)
    assert len(table) == len(ROUTES), "a route is listed twice in routes.ROUTES"
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert served == table == documented
    # The live node serves every documented route: an id that cannot exist gets the handler's
    # 404 (or a 400 for a missing body), never the router's "no route" 404 or its 405.
    for method, path, op in sorted(documented):
        response = service.api.request(method, path.replace("{id}", "999999"))
        assert response.status_code in (200, 400, 404), (op, response.status_code, response.text)
        assert "no route" not in response.text, (op, response.text)


# ---- 2. schemathesis against a live node ---------------------------------------------------

SAFE_CODES = ("sleep 30", "true", "echo ok")
SAFE_ENV_PREFIX = "RVT_"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_RESTARTS_CAP = 2  # a generated policy may ask for 1000 restarts: keep the node's load small
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,  # with a token that works: resent without one and with a bad one, must be 401
    unsupported_method,  # the coverage phase's other methods: 405 with an Allow header
]
# Not used: positive_data_acceptance and negative_data_rejection. The node is more lenient than
# JSON Schema can say: legacy fields match in any letter case and take null for "" (as Go's
# encoding/json did), an empty query parameter means its default, and restart.backoff_max_s
# must be >= backoff_s (a rule between two fields). The checks above hold regardless.


def _safe_code(value: Any) -> str:
    # Deterministic in the generated value, so Hypothesis can replay and shrink a failure.
    return SAFE_CODES[len(repr(value)) % len(SAFE_CODES)]


def _safe_env(env: dict[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for name, value in env.items():
        if isinstance(name, str) and ENV_NAME.fullmatch(name):
            # RUNVISOR_* names stay: the node must refuse them (422), and then runs nothing.
            name = name if name.startswith("RUNVISOR_") else SAFE_ENV_PREFIX + name
        elif "%" in str(name):
            continue  # BASH_FUNC_f%%: bash would import it as a function
        out[name] = value
    return out


def harmless(body: Any) -> Any:
    """The body with every field that could make bash run something replaced (see above)."""
    if isinstance(body, (str, bytes)):
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body  # not JSON: no route reads a command from it
        text = json.dumps(harmless(decoded))
        return text if isinstance(body, str) else text.encode()
    if isinstance(body, list):
        return [harmless(item) for item in body]
    if not isinstance(body, dict):
        return body
    out: dict[Any, Any] = {}
    had_code = False
    for key, value in body.items():
        lower = key.lower() if isinstance(key, str) else None
        if lower == "code":
            had_code = True
            continue
        if lower == "env" and isinstance(value, dict):
            value = _safe_env(value)
        elif lower == "restart" and isinstance(value, dict):
            value = dict(value)
            restarts = value.get("max_restarts")
            if isinstance(restarts, int) and not isinstance(restarts, bool) and restarts > 0:
                value["max_restarts"] = min(restarts, MAX_RESTARTS_CAP)
        out[key] = harmless(value) if isinstance(value, (dict, list)) and lower != "env" else value
    if had_code:
        out["code"] = _safe_code(body.get("code"))
    return out


def unsafe_fields(data: Any) -> list[str]:
    """Every `code` value not in SAFE_CODES and env name not RVT_/RUNVISOR_, anywhere in `data`."""
    found: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                lower = key.lower() if isinstance(key, str) else ""
                if lower == "code" and value not in SAFE_CODES:
                    found.append(f"code={value!r}")
                if lower == "env" and isinstance(value, dict):
                    for name in value:
                        ok = isinstance(name, str) and (
                            name.startswith((SAFE_ENV_PREFIX, "RUNVISOR_"))
                            or not ENV_NAME.fullmatch(name)
                        )
                        if not ok or "%" in str(name):
                            found.append(f"env name {name!r}")
                stack.append(value)
    return found


class GuardAdapter(HTTPAdapter):
    """Refuses to send a body that could make the node run anything but SAFE_CODES."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body
        if body:
            raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
            if not isinstance(raw, bytes):
                raise AssertionError(f"refusing to send a streamed body to {request.url}")
            try:
                data = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
            except (ValueError, UnicodeDecodeError):
                data = None  # the node cannot read a command from it either
            bad = unsafe_fields(data)
            if bad:
                raise AssertionError(f"refusing to send {bad} to {request.url}")
        return super().send(request, *args, **kwargs)


@pytest.fixture
def guarded_session() -> Iterator[requests.Session]:
    session = requests.Session()
    session.mount("http://", GuardAdapter())
    session.mount("https://", GuardAdapter())
    yield session
    session.close()


@pytest.fixture
def known_ids(service: Service) -> Iterator[dict[str, list[int]]]:
    """Commands and runs that exist, so generated ids reach the handlers' success paths too."""
    api = service.api
    # Ids 1 and 2 (the lowest, which the coverage phase and Hypothesis favour) are "sleep 30"
    # with an active run: stopping them and deleting the commands meet 202 and 409.
    commands = [api.create_command(code)["id"] for code in SAFE_CODES for _ in range(2)]
    runs = [api.start_run(command_id)["id"] for command_id in commands]
    for run_id in runs[2:]:  # finished ("true", "echo ok"): reads with and without output
        api.wait_finished(run_id)
    yield {"command": commands, "run": runs}
    # Afterwards: every run the node made ran one of SAFE_CODES.
    page = api.get("/api/v1/runs?limit=1000").json()
    assert page["total"] == len(page["items"])
    ran = {run["code"] for run in page["items"]}
    assert ran <= set(SAFE_CODES), ran - set(SAFE_CODES)


# The document the node serves, built by the same code: the first test checks that the two are
# equal, and `live_base` checks it again on each node. Loading it at import time lets
# schemathesis make one test per operation (its lazy `from_fixture` loader does not run under
# pytest 9.2, which dropped the `Node._nodeid` it sets).
DOCUMENT = build_openapi(version=__version__)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config())


@pytest.fixture
def live_base(service: Service) -> str:
    assert service.api.get("/api/v1/openapi.json", token="").json() == DOCUMENT
    return service.api.base


_RUN_PATH = re.compile(r"/(runs|command/result|command/stop)/\{id\}")


def _aim_at_known(case: Any, known_ids: dict[str, list[int]]) -> None:
    """Most generated ids go to existing commands/runs (deterministic in the generated id)."""
    params = case.path_parameters or {}
    value = params.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or value % 4 == 0:
        return
    kind = "run" if _RUN_PATH.search(case.operation.path) else "command"
    ids = known_ids[kind]
    params["id"] = ids[value % len(ids)]


def _streams_of_ended_runs(case: Any, known_ids: dict[str, list[int]]) -> None:
    """A live stream lasts until its run ends: one of the "sleep 30" runs would hold the test
    for 30 s. Streams (events, output?follow=) go to a run that has ended; other ids stay."""
    params = case.path_parameters or {}
    follow = case.operation.path.endswith("/events") or "follow" in (case.query or {})
    running = {str(run_id) for run_id in known_ids["run"][:2]}
    if follow and str(params.get("id")) in running:  # an int, or a string of digits
        params["id"] = known_ids["run"][2]


def _short_waits(case: Any) -> None:
    """A generated `wait_s` may ask for a minute on a run that never ends: keep the parameter
    (valid or not, its answer is checked) but wait at most a second."""
    query = case.query
    if not query or "wait_s" not in query:
        return
    value = query["wait_s"]
    if isinstance(value, bool):
        return
    if isinstance(value, int) and value > 1:
        query["wait_s"] = 1
    elif isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 1:
        query["wait_s"] = "1"


def _also_unauthorized(case: Any) -> bool:
    """One case in four is sent first without a token, then with a viewer's, to check 401/403.

    Chosen from the generated request itself, so that Hypothesis can replay a failure.
    """
    key = f"{case.method} {case.formatted_path} {case.query!r} {case.body!r}".encode()
    return zlib.crc32(key) % 4 == 0


_CLOSED_COMPONENTS = closed(DOCUMENT["components"])


def check_documented_fields(case: Any, response: Any) -> None:
    """The JSON body has only documented fields, each of its documented type and format.

    response_schema_conformance lets undocumented fields through (the schemas do not close
    their objects, so that fields can be added); here a field the document does not name fails.
    """
    if case.method.upper() != case.operation.method.upper():
        return  # the coverage phase's other methods: unsupported_method checks their 405
    responses = DOCUMENT["paths"][case.operation.path][case.operation.method.lower()]["responses"]
    documented = responses.get(str(response.status_code))
    if documented is None:
        return  # status_code_conformance has passed it: the operation documents no such status
    if "$ref" in documented:
        documented = DOCUMENT["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content = documented.get("content", {})
    if "application/json" not in content:
        return
    root = {"components": _CLOSED_COMPONENTS, **closed(content["application/json"]["schema"])}
    errors = sorted(
        Draft202012Validator(root, format_checker=FormatChecker()).iter_errors(response.json()),
        key=str,
    )
    assert not errors, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: "
        + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    )


@pytest.mark.slow
@settings(
    max_examples=25,  # per operation, fuzzing phase; the coverage phase adds its own cases
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_the_live_api_conforms_to_its_openapi_document(
    case: Any, live_base: str, known_ids: dict[str, list[int]], guarded_session: requests.Session
) -> None:
    _aim_at_known(case, known_ids)
    _streams_of_ended_runs(case, known_ids)
    _short_waits(case)
    if case.body is not None:
        case.body = harmless(case.body)
    # Schemathesis may fill the `token` header (a security scheme) with a made-up value; the
    # Authorization header, read first, is ours.
    headers = {k: v for k, v in dict(case.headers or {}).items() if k.lower() != "authorization"}
    tokens: list[str | None] = [ADMIN]
    if _also_unauthorized(case):
        tokens = [None, VIEWER, ADMIN]  # the refused ones first: they must change nothing
    for token in tokens:
        sent = dict(headers)
        if token is None:
            case.headers = {k: v for k, v in headers.items() if k.lower() != "token"}
            sent = dict(case.headers)
        else:
            case.headers = headers
            sent["Authorization"] = f"Bearer {token}"
        response = case.call_and_validate(
            base_url=live_base, session=guarded_session, headers=sent, checks=CHECKS
        )
        check_documented_fields(case, response)


def test_the_guard_rewrites_and_refuses_unsafe_bodies() -> None:
    """The guard itself: what it lets through, and what it refuses."""
    assert unsafe_fields(harmless({"code": "rm -rf /", "description": "x"})) == []
    assert harmless({"CoDe": "rm -rf /"})["code"] in SAFE_CODES
    assert "CoDe" not in harmless({"CoDe": "rm -rf /"})
    assert unsafe_fields(harmless('{"code": "reboot"}')) == []
    assert unsafe_fields(json.loads(harmless(b'{"Code": "reboot"}'))) == []
    env = harmless({"env": {"BASH_ENV": "$(reboot)", "PS4": "x", "1A": "y", "F%%": "z"}})["env"]
    assert env == {"RVT_BASH_ENV": "$(reboot)", "RVT_PS4": "x", "1A": "y"}
    assert unsafe_fields({"env": env}) == []
    assert harmless({"restart": {"policy": "always", "max_restarts": 1000}})["restart"] == {
        "policy": "always",
        "max_restarts": MAX_RESTARTS_CAP,
    }
    assert unsafe_fields({"code": "rm -rf /"}) == ["code='rm -rf /'"]
    assert unsafe_fields([{"x": {"cOdE": 5}}]) == ["code=5"]
    assert unsafe_fields({"env": {"BASH_ENV": "x"}}) == ["env name 'BASH_ENV'"]
    adapter = GuardAdapter()
    request = requests.Request(
        "POST", "http://127.0.0.1:9/command", json={"code": "rm -rf /"}
    ).prepare()
    with pytest.raises(AssertionError, match="refusing"):
        adapter.send(request)  # refused before any connection is tried
