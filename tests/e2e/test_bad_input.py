"""Bad input gets a 4xx JSON error and stores nothing, on the v1 and the legacy routes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fix_service import ADMIN, VIEWER, Api, Service

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
