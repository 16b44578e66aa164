"""Bad input gets a 4xx JSON error and stores nothing, on the v1 and the legacy routes."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis

from runvisor.http import openapi, routes
from tests.fix_service import ADMIN, VIEWER, Api, Service
from tests.fix_stores import drop_database, with_dbname

JSON = {"Content-Type": "application/json"}


def counts(api: Api) -> tuple[int, int]:
    commands = api.get("/api/v1/commands").json()["total"]
    runs = api.get("/api/v1/runs").json()["total"]
    return commands, runs


def assert_error(response: Any, status: int, *, legacy: bool = False) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    if legacy:
        assert isinstance(body["error"], str) and body["error"]
    else:
        assert body["error"]["code"] and body["error"]["message"]
    return dict(body)


BAD_COMMAND_BODIES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("malformed JSON", b'{"code": "echo', JSON, 400),
    ("not an object", b'["echo hi"]', JSON, 400),
    ("a bare string", b'"echo hi"', JSON, 400),
    ("wrong content type", b'{"code": "echo hi"}', {"Content-Type": "text/plain"}, 415),
    ("no content type", b'{"code": "echo hi"}', {}, 415),
    ("empty body", b"", JSON, 400),
    ("empty code", b'{"code": ""}', JSON, 422),
    ("blank code", b'{"code": "   "}', JSON, 422),
    ("code with NUL", b'{"code": "echo \\u0000"}', JSON, 422),
    ("code is a number", b'{"code": 5}', JSON, 422),
    ("missing code", b'{"description": "x"}', JSON, 422),
    ("unknown field", b'{"code": "true", "nope": 1}', JSON, 422),
    ("timeout as string", b'{"code": "true", "timeout_s": "5"}', JSON, 422),
    ("negative timeout", b'{"code": "true", "timeout_s": -1}', JSON, 422),
    ("bad restart policy", b'{"code": "true", "restart": {"policy": "sometimes"}}', JSON, 422),
    ("over-long code", json.dumps({"code": "x" * 70000}).encode(), JSON, 422),
    ("body over the size limit", json.dumps({"code": "x" * 2_000_000}).encode(), JSON, 413),
]


@pytest.mark.parametrize(
    "name,body,headers,status", BAD_COMMAND_BODIES, ids=[c[0] for c in BAD_COMMAND_BODIES]
)
def test_bad_command_bodies_are_refused_and_store_nothing(
    api: Api, name: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    before = counts(api)
    assert_error(api.post("/api/v1/commands", data=body, headers=dict(headers)), status)
    assert counts(api) == before


@pytest.mark.parametrize(
    "name,body,headers,status", BAD_COMMAND_BODIES, ids=[c[0] for c in BAD_COMMAND_BODIES]
)
def test_bad_legacy_command_bodies_are_refused_and_store_nothing(
    service: Service, name: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    api = service.api
    if name in ("timeout as string", "negative timeout", "bad restart policy"):
        status = 422  # unknown fields of the legacy shape
    before = counts(api)
    response = api.post("/command", data=body, headers={**headers, "token": ADMIN}, token="")
    assert_error(response, status, legacy=True)
    assert counts(api) == before


@pytest.mark.parametrize(
    "path,status",
    [
        ("/api/v1/commands/abc", 400),
        ("/api/v1/commands/1.5", 400),
        ("/api/v1/commands/-1", 400),
        ("/api/v1/commands/999999", 404),
        ("/api/v1/commands/99999999999999999999999", 404),
        ("/api/v1/runs/abc", 400),
        ("/api/v1/runs/424242", 404),
        ("/api/v1/runs/424242/output", 404),
        ("/api/v1/commands?limit=100000", 400),
        ("/api/v1/commands?limit=0", 400),
        ("/api/v1/commands?limit=ten", 400),
        ("/api/v1/commands?offset=-1", 400),
        ("/api/v1/runs?status=sleeping", 400),
        ("/api/v1/runs?command_id=x", 400),
        ("/api/v1/nowhere", 404),
    ],
)
def test_bad_ids_and_parameters(api: Api, path: str, status: int) -> None:
    assert_error(api.get(path), status)


@pytest.mark.parametrize(
    "path,status",
    [
        ("/command/abc", 400),
        ("/command/999999", 404),
        ("/command/result/abc", 400),
        ("/command/result/999999", 404),
        ("/command/exec/abc", 400),
        ("/command/exec/999999", 404),
        ("/command/stop/xyz", 400),
        ("/commands?limit=100000", 400),
        ("/commands?offset=-3", 400),
    ],
)
def test_bad_legacy_ids_and_parameters(api: Api, path: str, status: int) -> None:
    before = counts(api)
    response = api.get(path, headers={"token": ADMIN}, token="")
    assert_error(response, status, legacy=True)
    assert counts(api) == before


def test_starting_a_run_with_bad_overrides_stores_nothing(api: Api) -> None:
    command = api.create_command("true")
    before = counts(api)
    for body in (
        {"env": {"RUNVISOR_TOKENS": "x"}},
        {"env": {"BAD NAME": "x"}},
        {"env": {"A": 1}},
        {"timeout_s": 0},
        {"restart": {"policy": "always", "max_restarts": -1}},
    ):
        assert_error(api.post(f"/api/v1/commands/{command['id']}/runs", json=body), 422)
    assert_error(api.post("/api/v1/commands/999999/runs", json={}), 404)
    assert counts(api) == before


def test_no_token_is_401_a_wrong_token_is_401_and_a_viewer_cannot_create(api: Api) -> None:
    before = counts(api)
    missing = assert_error(api.post("/api/v1/commands", json={"code": "true"}, token=""), 401)
    assert missing["error"]["code"] == "missing_token"
    wrong = api.post("/api/v1/commands", json={"code": "true"}, token="not-a-token")
    assert assert_error(wrong, 401)["error"]["code"] == "invalid_token"
    assert_error(api.post("/api/v1/commands", json={"code": "true"}, token=VIEWER), 403)
    assert_error(api.get("/command/1", token=""), 401, legacy=True)
    assert_error(api.get("/ping", token=""), 401, legacy=True)
    assert counts(api) == before
    assert api.get("/api/v1/commands", token=VIEWER).status_code == 200


def test_open_routes_need_no_token(api: Api) -> None:
    assert api.get("/healthz", token="").json() == {"status": "ok"}
    ready = api.get("/readyz", token="")
    assert ready.status_code == 200 and ready.json()["stores"] == {"postgres": "ok", "redis": "ok"}
    assert api.get("/api/v1/openapi.json", token="").json()["openapi"].startswith("3.1")


# ---- odd numerals: every route, one node ----------------------------------------------------
#
# Each route of the route table gets numerals no integer parser should take as one, in its path
# id, in its query parameters and in its JSON body's numeric fields. Each must answer 4xx with
# the documented error shape, and the node's log must hold no traceback.

FIVE_THOUSAND_DIGITS = "9" * 5000
LEADING_ZEROS = "0" * 5000
NOT_NUMBERS = [
    FIVE_THOUSAND_DIGITS,
    "-" + FIVE_THOUSAND_DIGITS,
    "+1",
    "-1",
    "-0",
    "+0",
    "1e3",
    "0x10",
    "1.0",
    " 1",
    "1 ",
    "NaN",
    "Infinity",
    "-Infinity",
    "\u0661\u0662",  # Arabic-Indic digits
    "\u00b2",  # superscript two
    "\uff11\uff12",  # full-width digits
    "\x00",
    "%00",  # the three characters, not a NUL
    "1\x00",
    "1_000",
    "1,2",
    "\u200b1",
    str(2**63),  # one past PostgreSQL's bigint
    str(2**64),
    "9" * 20,
]
RAW_ESCAPES = ["%ff", "%c3", "%ED%A0%80"]  # sent as they are: not UTF-8 once decoded
JSON_NOT_ALLOWED = [
    FIVE_THOUSAND_DIGITS,
    "-" + FIVE_THOUSAND_DIGITS,
    "1" + "0" * 4000 + ".5",
    "1e400",
    "-1e400",
    "1e308",
    "123456789012345678901234567890",
    "-1",
    "NaN",
    "Infinity",
    "-Infinity",
    '"5"',
    "true",
    "[1]",
    '{"n": 1}',
]
# Numeric fields of each route with a JSON body. -0 is 0 in JSON: refused where 0 is.
JSON_FIELDS: dict[str, list[str]] = {
    "createCommand": [
        "timeout_s",
        "stuck_after_s",
        "max_output_bytes",
        "restart.max_restarts",
        "restart.window_s",
        "restart.backoff_s",
        "restart.backoff_max_s",
    ],
    "startRun": [
        "timeout_s",
        "stuck_after_s",
        "restart.max_restarts",
        "restart.window_s",
        "restart.backoff_s",
        "restart.backoff_max_s",
    ],
    "stopRun": ["grace_s"],
    "legacyCreateCommand": ["code", "description"],
}
ZERO_REFUSED = {"timeout_s", "stuck_after_s", "max_output_bytes", "restart.window_s"}
TABLE = {route.operation_id: route for route in routes.ROUTE_TABLE}
INTEGER_QUERY = {"limit", "offset", "command_id", "run_id"}


@pytest.fixture(scope="module")
def odd_node(
    pg_server_url: str,
    template_db: str,
    redis_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    """One node for every case below, with one command and one finished run (ids 1): a path id
    that is not 1 names nothing, and the list routes have something to page through."""
    database = f"runvisor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template_db}"')
    prefix = f"rvtest-{uuid.uuid4().hex[:12]}"
    service = Service(
        database_url=with_dbname(pg_server_url, database),
        redis_url=redis_server_url,
        redis_prefix=prefix,
        data_dir=tmp_path_factory.mktemp("odd-input"),
        node_id=f"odd-{os.getpid()}",
    )
    try:
        service.start()
        run = service.api.run_code("printf odd")
        assert (run["id"], run["command_id"]) == (1, 1)
        assert service.api.wait_finished(1)["status"] == "succeeded"
        yield service
    finally:
        service.stop()
        drop_database(pg_server_url, database)
        client = redis.Redis.from_url(redis_server_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def send(service: Service, method: str, path: str, body: bytes | None = None) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return service.api.request(method, path, data=body, headers=headers)


def refused(response: Any, statuses: set[int], *, legacy: bool, what: str) -> str | None:
    """None if `response` is one of `statuses` with the documented error body, else why not."""
    problem = None
    if response.status_code not in statuses:
        problem = f"status {response.status_code}"
    elif not response.headers.get("Content-Type", "").startswith("application/json"):
        problem = f"content type {response.headers.get('Content-Type')}"
    else:
        error = response.json().get("error")
        ok = isinstance(error, str) if legacy else isinstance(error, dict) and error.get("message")
        problem = None if ok and error else f"body {response.text[:200]}"
    return None if problem is None else f"{what}: {problem} ({response.text[:120]!r})"


def assert_no_traceback(service: Service) -> None:
    log = service.log_path.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, service.log_tail()


def encoded(values: list[str]) -> list[str]:
    return [quote(v, safe="") for v in values] + RAW_ESCAPES


@pytest.mark.parametrize("op", [op for _, path, op in routes.ROUTES if "{id}" in path])
def test_odd_path_ids_are_400_or_404(odd_node: Service, op: str) -> None:
    route = TABLE[op]
    problems = []
    for value in [*encoded(NOT_NUMBERS), "", LEADING_ZEROS + "0", LEADING_ZEROS + "7"]:
        response = send(odd_node, route.method, route.path.replace("{id}", value))
        what = f"{route.method} {route.path} id={value[:30]!r}"
        problem = refused(response, {400, 404}, legacy=route.legacy, what=what)
        if problem:
            problems.append(problem)
    assert not problems, "\n".join(problems)
    assert_no_traceback(odd_node)


def query_params(op: str) -> dict[str, str]:
    """The real name of each query parameter of the operation -> its schema type."""
    params = openapi.build_openapi(version="x")["paths"][TABLE[op].path][TABLE[op].method.lower()]
    return {
        p["name"]: p["schema"]["type"] for p in params.get("parameters", []) if p["in"] == "query"
    }


@pytest.mark.parametrize("op", [op for _, _, op in routes.ROUTES if query_params(op)])
def test_odd_query_values_are_400(odd_node: Service, op: str) -> None:
    route = TABLE[op]
    path = route.path.replace("{id}", "1")
    problems = []
    for name, kind in query_params(op).items():
        values = encoded(NOT_NUMBERS) if name in INTEGER_QUERY else ["%00", "a%0Ab", "x" * 201]
        if kind == "array" or name == "role":  # ?status=, ?role=: a word from a list
            values = encoded(["1", "NaN", "\x00", "running;", "\u00b2"])
        for value in values:
            for query in (f"{name}={value}", f"{name}={value}&{name}=1"):
                response = send(odd_node, route.method, f"{path}?{query}")
                what = f"{route.method} {path}?{query[:60]}"
                problem = refused(response, {400}, legacy=route.legacy, what=what)
                if problem:
                    problems.append(problem)
    assert not problems, "\n".join(problems)
    assert_no_traceback(odd_node)


@pytest.mark.parametrize("op", [op for _, _, op in routes.ROUTES])
def test_numeric_query_values_are_read_as_numbers_or_ignored(odd_node: Service, op: str) -> None:
    """Leading zeros are the number; near 2^63 is in range (offset + limit may pass it); a
    parameter a route does not take is ignored. None of it is a 5xx."""
    route = TABLE[op]
    documented = query_params(op)
    problems = []
    for query in (
        f"limit={LEADING_ZEROS}1&offset=000",
        f"offset={LEADING_ZEROS}",
        f"offset={2**63 - 1}&limit={2**63 - 1}",
        f"offset={2**63 - 2}&limit=2",
        f"command_id={LEADING_ZEROS}1&run_id={2**63 - 1}",
        "limit=&offset=&command_id=&status=&run_id=&action=&actor=&role=",
    ):
        # A route without these parameters gets an id that names nothing and no body: it
        # must ignore the query, and nothing may start or change.
        path = route.path.replace("{id}", "1" if documented else "999999")
        response = send(odd_node, route.method, f"{path}?{query}")
        status = response.status_code
        if status >= 500 or (
            status >= 400 and refused(response, {status}, legacy=route.legacy, what="")
        ):
            problems.append(f"{route.method} {path}?{query[:80]}: {status} {response.text[:120]}")
    assert not problems, "\n".join(problems)
    assert_no_traceback(odd_node)


def test_offsets_near_two_to_the_63_read_nothing(odd_node: Service) -> None:
    api = odd_node.api
    for query in (f"offset={2**63 - 1}&limit={2**63 - 1}", f"offset={2**63 - 2}&limit=2"):
        response = api.get(f"/api/v1/runs/1/output?{query}")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["X-Output-Bytes"] == "3"
    whole = api.get(f"/api/v1/runs/1/output?offset={LEADING_ZEROS}1&limit={2**63 - 1}")
    assert whole.content == b"dd"
    page = api.get(f"/api/v1/runs?offset={2**63 - 1}&limit={LEADING_ZEROS}1").json()
    assert page == {"items": [], "limit": 1, "offset": 2**63 - 1, "total": 1}
    assert api.get(f"/api/v1/commands/{LEADING_ZEROS}1").json()["id"] == 1
    assert_no_traceback(odd_node)


def body_with(op: str, field: str, numeral: str) -> bytes:
    fields = {"code": '"true"'} if op in ("createCommand", "legacyCreateCommand") else {}
    if field.startswith("restart."):
        fields["restart"] = '{"policy": "on-failure", "' + field[8:] + '": ' + numeral + "}"
    else:
        fields[field] = numeral
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


@pytest.mark.parametrize(
    "op,field", [(op, field) for op, fields in JSON_FIELDS.items() for field in fields]
)
def test_odd_numbers_in_json_bodies_are_400_or_422(odd_node: Service, op: str, field: str) -> None:
    route = TABLE[op]
    path = route.path.replace("{id}", "1")
    before = counts(odd_node.api)
    numerals = [
        *JSON_NOT_ALLOWED,
        *(["-0", "0", "-0.0", "1e-400"] if field in ZERO_REFUSED else []),
    ]
    if field in ("code", "description"):
        numerals.remove('"5"')  # a string: valid there
    problems = []
    for numeral in numerals:
        response = send(odd_node, route.method, path, body_with(op, field, numeral))
        what = f"{route.method} {path} {field}={numeral[:30]}"
        problem = refused(response, {400, 422}, legacy=route.legacy, what=what)
        if problem:
            problems.append(problem)
    assert not problems, "\n".join(problems)
    assert counts(odd_node.api) == before
    assert_no_traceback(odd_node)


# ---- /readyz says why a store is down --------------------------------------------------------


def test_readyz_names_the_problem_of_a_redis_that_never_answers(service_factory) -> None:
    # A listener that accepts connections (the kernel completes them) and never answers: the
    # ping times out, and a timeout's text is empty. It once read "down: ".
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        port = silent.getsockname()[1]
        service: Service = service_factory(redis_url=f"redis://127.0.0.1:{port}/0")
        ready = service.api.get("/readyz", token="")
        assert ready.status_code == 503
        stores = ready.json()["stores"]
        assert stores["postgres"] == "ok"
        assert stores["redis"].startswith("down: ") and "Timeout" in stores["redis"], stores
        assert len(stores["redis"]) > len("down: ") + 5


def test_readyz_names_the_problem_of_a_redis_nobody_listens_for(service_factory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed below: nothing listens there afterwards
    service: Service = service_factory(redis_url=f"redis://127.0.0.1:{port}/0")
    stores = service.api.get("/readyz", token="").json()["stores"]
    assert stores["redis"].startswith("down: ") and f"127.0.0.1:{port}" in stores["redis"], stores
