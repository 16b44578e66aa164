"""GET /api/v1/audit: admin only, newest first, filters and paging, the right actor per row."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.fix_service import ADMIN, OPERATOR, VIEWER, Api, Service


def principal(role: str, token: str) -> str:
    return f"{role}:{hashlib.sha256(token.encode()).hexdigest()[:8]}"


def audit(api: Api, query: str = "") -> dict[str, Any]:
    response = api.get(f"/api/v1/audit{query}", token=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


def create_start_stop_delete(service: Service) -> tuple[int, int]:
    """The roles' flow: admin creates, operator starts and stops, admin deletes."""
    api = service.api
    command = api.create_command("echo started; sleep 60")
    response = api.post(f"/api/v1/commands/{command['id']}/runs", json={}, token=OPERATOR)
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    api.wait_status(run_id, "running")
    stop = api.post(f"/api/v1/runs/{run_id}/stop", json={"grace_s": 5}, token=OPERATOR)
    assert stop.status_code == 202, stop.text
    assert api.wait_finished(run_id)["status"] == "stopped"
    assert api.delete(f"/api/v1/commands/{command['id']}").status_code == 204
    return command["id"], run_id


def test_only_an_admin_reads_the_audit(api: Api) -> None:
    api.create_command("true")
    for token in (VIEWER, OPERATOR):
        response = api.get("/api/v1/audit", token=token)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
    assert api.get("/api/v1/audit", token="").status_code == 401
    assert audit(api)["total"] == 1


def test_a_create_start_stop_flow_is_audited_with_the_right_actors(service: Service) -> None:
    command_id, run_id = create_start_stop_delete(service)
    page = audit(service.api)
    items = page["items"]
    assert page["total"] == len(items) == 5 and (page["limit"], page["offset"]) == (50, 0)
    assert [e["id"] for e in items] == sorted((e["id"] for e in items), reverse=True)
    admin, operator = principal("admin", ADMIN), principal("operator", OPERATOR)
    node = f"node:{service.node_id}"
    # Oldest first here, to read as the flow went.
    assert [(e["action"], e["actor"], e["command_id"], e["run_id"]) for e in reversed(items)] == [
        ("command.create", admin, command_id, None),
        ("run.create", operator, command_id, run_id),
        ("run.stop", operator, None, run_id),
        ("run.stopped", node, None, run_id),
        ("command.delete", admin, command_id, None),
    ]
    by_action = {e["action"]: e for e in items}
    stop = by_action["run.stop"]
    assert (stop["role"], stop["token_fingerprint"], stop["node"]) == (
        "operator", operator.split(":")[1], None
    )  # fmt: skip
    assert stop["detail"] == {"grace_s": 5.0}
    stopped = by_action["run.stopped"]
    assert (stopped["role"], stopped["token_fingerprint"], stopped["node"]) == (
        None, None, service.node_id
    )  # fmt: skip
    assert stopped["detail"]["reason"] == "stopped" and stopped["detail"]["signal"] == 15
    assert all(e["at"].endswith("Z") for e in items)
    assert [e["at"] for e in items] == sorted((e["at"] for e in items), reverse=True)


def test_filters_and_paging(service: Service) -> None:
    command_id, run_id = create_start_stop_delete(service)
    other = service.api.create_command("true")  # a sixth row, of another command
    api = service.api

    def actions(query: str) -> list[str]:
        page = audit(api, query)
        assert page["total"] == len(page["items"])
        return [e["action"] for e in page["items"]]

    assert actions(f"?command_id={command_id}") == [
        "command.delete",
        "run.create",
        "command.create",
    ]
    assert actions(f"?command_id={other['id']}") == ["command.create"]
    assert actions(f"?run_id={run_id}") == ["run.stopped", "run.stop", "run.create"]
    assert actions("?action=run.stop") == ["run.stop"]
    assert actions("?role=operator") == ["run.stop", "run.create"]
    assert actions("?role=node") == ["run.stopped"]
    assert actions("?role=ADMIN&action=command.create") == ["command.create", "command.create"]
    assert actions(f"?actor={principal('admin', ADMIN)}&command_id={command_id}") == [
        "command.delete",
        "command.create",
    ]
    assert actions(f"?actor=node:{service.node_id}") == ["run.stopped"]
    assert actions("?action=no.such.action") == []
    assert actions("?run_id=999999") == []

    everything = audit(api)["items"]
    assert len(everything) == 6
    page = audit(api, "?limit=2&offset=1")
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, 6)
    assert page["items"] == everything[1:3]
    past = audit(api, "?offset=100")
    assert past["items"] == [] and past["total"] == 6
    filtered = audit(api, "?role=admin&limit=1&offset=1")
    assert filtered["total"] == 3 and filtered["items"][0]["action"] == "command.delete"


def test_bad_filters_are_400_and_name_the_parameter(api: Api) -> None:
    for query, name in [
        ("?role=root", "role"),
        ("?action=%00", "action"),
        ("?actor=a%0Ab", "actor"),
        (f"?action={'x' * 201}", "action"),
        ("?run_id=abc", "run_id"),
        ("?command_id=0", "command_id"),
        ("?limit=0", "limit"),
        ("?offset=-1", "offset"),
    ]:
        response = api.get(f"/api/v1/audit{query}")
        assert response.status_code == 400, (query, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_parameter" and error["message"].startswith(f"{name}: ")
