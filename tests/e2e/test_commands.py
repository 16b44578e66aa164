"""Commands: create, read, list with pagination, delete; output caps."""

from __future__ import annotations

from tests.fix_service import OPERATOR, Api


def test_create_answers_201_with_location_and_every_field(api: Api) -> None:
    response = api.post(
        "/api/v1/commands",
        json={
            "code": "echo hi",
            "name": "greet",
            "description": "says hi",
            "timeout_s": 5,
            "stuck_after_s": 3,
            "restart": {"policy": "on-failure", "max_restarts": 2},
            "max_output_bytes": 4096,
        },
    )
    assert response.status_code == 201
    command = response.json()
    assert response.headers["Location"] == f"/api/v1/commands/{command['id']}"
    assert command["name"] == "greet" and command["description"] == "says hi"
    assert command["timeout_s"] == 5 and command["stuck_after_s"] == 3
    assert command["restart"]["policy"] == "on-failure" and command["restart"]["max_restarts"] == 2
    assert command["max_output_bytes"] == 4096
    assert api.get(response.headers["Location"]).json() == command


def test_list_pages_by_row_offset_with_a_total(api: Api) -> None:
    ids = [api.create_command(f"echo {i}")["id"] for i in range(5)]
    page = api.get("/api/v1/commands?limit=2&offset=1").json()
    assert [c["id"] for c in page["items"]] == ids[1:3]
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, 5)
    assert api.get("/api/v1/commands?offset=10").json()["items"] == []


def test_a_run_started_answers_202_with_location(api: Api) -> None:
    command = api.create_command("true")
    response = api.post(f"/api/v1/commands/{command['id']}/runs")
    assert response.status_code == 202
    run = response.json()
    assert response.headers["Location"] == f"/api/v1/runs/{run['id']}"
    assert run["command_id"] == command["id"] and run["status"] in ("queued", "running")
    # The run's pid is its current attempt's, even while that pid is being recorded.
    assert run["pid"] == (run["attempts"][-1]["pid"] if run["attempts"] else None)
    assert api.wait_finished(run["id"])["status"] == "succeeded"


def test_delete_keeps_runs_as_history_and_refuses_while_runs_are_active(api: Api) -> None:
    command = api.create_command("sleep 1000")
    run = api.start_run(command["id"])
    busy = api.delete(f"/api/v1/commands/{command['id']}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "command_busy"
    assert api.delete(f"/api/v1/commands/{command['id']}", token=OPERATOR).status_code == 403
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
    api.wait_finished(run["id"])
    assert api.delete(f"/api/v1/commands/{command['id']}").status_code == 204
    assert api.get(f"/api/v1/commands/{command['id']}").status_code == 404
    assert api.delete(f"/api/v1/commands/{command['id']}").status_code == 404
    assert api.post(f"/api/v1/commands/{command['id']}/runs").status_code == 404
    assert api.run(run["id"])["status"] == "stopped"  # its runs stay readable
    assert api.get("/api/v1/commands").json()["total"] == 0


def test_output_over_the_cap_keeps_head_and_tail_and_the_run_goes_on(api: Api) -> None:
    command = api.create_command(
        "head -c 5000 /dev/zero | tr '\\0' a; echo; echo end", max_output_bytes=1000
    )
    run = api.wait_finished(api.start_run(command["id"])["id"])
    assert run["status"] == "succeeded"
    assert run["output_truncated"] is True and run["output_bytes"] == 5005
    assert run["output_gap"] == {"start": 500, "end": 4505}
    expected = b"a" * 500 + b"\n[runvisor: 4005 bytes dropped]\n" + b"a" * 495 + b"\nend\n"
    assert api.output(run["id"]) == expected


def test_run_overrides_take_precedence_over_the_command(api: Api) -> None:
    command = api.create_command("sleep 30", timeout_s=100, env={"X": None})
    run = api.start_run(command["id"], timeout_s=0.5, env={"X": "1"})
    assert run["timeout_s"] == 0.5
    assert api.wait_finished(run["id"], timeout_s=15)["status"] == "timed_out"


def test_past_the_cap_the_spool_does_not_grow_without_bound(service, api: Api) -> None:
    from runvisor.procs.file_space import allocated_bytes
    from tests.polling import wait_until

    command = api.create_command(
        "head -c 8388608 /dev/zero; echo written; sleep 30", max_output_bytes=1000
    )
    run = api.start_run(command["id"])
    spool = service.data_dir / "spool" / str(run["id"]) / "1.out"
    wait_until(lambda: api.run(run["id"])["output_bytes"] == 8388616, 15, "all output seen")
    # The stored part of the spool is a hole now: its size stays, its blocks are freed.
    assert spool.stat().st_size == 8388616
    assert allocated_bytes(spool) < 2 * 1024 * 1024
    assert api.output(run["id"]) == (
        b"\0" * 500 + b"\n[runvisor: 8387616 bytes dropped]\n" + b"\0" * 492 + b"written\n"
    )
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
    api.wait_finished(run["id"])
