"""History survives a restart of the service; runs survive it too."""

from __future__ import annotations

from tests.fix_service import Service


def test_history_survives_a_restart(service_factory) -> None:
    first: Service = service_factory("node-history")
    api = first.api
    command = api.create_command("echo kept", name="keeper")
    run = api.wait_finished(api.start_run(command["id"])["id"])
    assert first.stop() == 0
    second: Service = service_factory("node-history")
    again = second.api.run(run["id"])
    assert again["status"] == "succeeded" and again["exit_code"] == 0
    assert second.api.output(run["id"]) == b"kept\n"
    assert second.api.get(f"/api/v1/commands/{command['id']}").json()["name"] == "keeper"
