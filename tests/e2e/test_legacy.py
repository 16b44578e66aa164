"""The original assignment's routes, walked through as its README does (JSON body on GET)."""

from __future__ import annotations

import time

from tests.fix_service import ADMIN, Service, wait_until

WALKTHROUGH_BODY = '{\n    "code": "echo \\"new command\\"",\n    "description": "maybe"\n    }'
HEADERS = {"token": ADMIN, "Content-Type": "application/json"}


def call(service: Service, method: str, path: str):
    return service.api.request(method, path, token="", headers=dict(HEADERS), data=WALKTHROUGH_BODY)


def test_the_original_readme_walkthrough_works_unchanged(service: Service) -> None:
    created = call(service, "POST", "/command")
    assert created.status_code == 200, created.text
    command = created.json()
    assert set(command) >= {"id", "code", "description", "created_at"}
    assert command["code"] == 'echo "new command"' and command["description"] == "maybe"

    run = call(service, "GET", f"/command/exec/{command['id']}").json()
    assert set(run) >= {"id", "command", "completed_at", "status"}
    assert run["command"]["id"] == command["id"] and run["status"] == "RUNNING"

    def completed():
        result = call(service, "GET", f"/command/result/{run['id']}").json()
        return result if result["status"] == "COMPLETED" else None

    result = wait_until(completed, 10, "the legacy run to complete")
    assert result["result"].strip() == "new command" and result["exit_code"] == 0

    shown = call(service, "GET", f"/command/{command['id']}").json()
    assert shown["id"] == command["id"] and shown["result"] == "new command\n"
    listed = call(service, "GET", "/commands?limit=3&offset=0").json()
    assert isinstance(listed, list) and listed[0]["id"] == command["id"]
    refused = call(service, "GET", f"/command/stop/{run['id']}")
    assert refused.status_code == 409 and isinstance(refused.json()["error"], str)
    assert call(service, "GET", "/ping").status_code == 200


def test_legacy_stop_answers_stopped_and_kills_the_run(service: Service) -> None:
    command = call(service, "POST", "/command").json()
    api = service.api
    long_run = api.start_run(api.create_command("echo started; sleep 1000")["id"])
    wait_until(lambda: api.output(long_run["id"]) == b"started\n", 10, "the run to start")
    started = time.monotonic()
    stopped = call(service, "GET", f"/command/stop/{long_run['id']}")
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["status"] == "STOPPED" and body["result"] == "started\n"
    assert time.monotonic() - started < 5
    assert command["id"] != long_run["command_id"]


def test_legacy_list_uses_row_offsets_and_an_empty_list_is_an_array(service: Service) -> None:
    assert call(service, "GET", "/commands").json() == []
    ids = [call(service, "POST", "/command").json()["id"] for _ in range(4)]
    page = call(service, "GET", "/commands?limit=2&offset=1").json()
    assert [c["id"] for c in page] == ids[1:3]
