"""Runs survive the service: a graceful stop or a kill -9 loses neither runs nor output."""

from __future__ import annotations

import time

from tests.fix_service import Service, wait_until

COUNT_TO_20 = "for i in $(seq 1 20); do echo $i; sleep 0.5; done"
EXPECTED_20 = "".join(f"{i}\n" for i in range(1, 21)).encode()


def test_kill_9_of_the_service_loses_nothing_and_the_run_is_adopted(service_factory) -> None:
    first: Service = service_factory("node-crash")
    run = first.api.run_code(COUNT_TO_20)
    wait_until(lambda: first.api.output(run["id"]).count(b"\n") >= 3, 10, "some output")
    first.kill()
    killed_at = time.monotonic()
    assert first.run_processes(), "the run must go on while the service is down"
    second: Service = service_factory("node-crash")
    assert time.monotonic() - killed_at < 3.0
    final = second.api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "succeeded" and final["exit_code"] == 0, final
    assert len(final["attempts"]) == 1
    assert second.api.output(run["id"]) == EXPECTED_20


def test_a_graceful_stop_leaves_runs_running_and_they_are_adopted(service_factory) -> None:
    first: Service = service_factory("node-graceful")
    run = first.api.run_code(COUNT_TO_20)
    wait_until(lambda: first.api.output(run["id"]).count(b"\n") >= 2, 10, "some output")
    assert first.stop() == 0
    assert first.run_processes(), "a graceful stop of the service must not kill runs"
    second: Service = service_factory("node-graceful")
    final = second.api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "succeeded" and len(final["attempts"]) == 1
    assert second.api.output(run["id"]) == EXPECTED_20


def test_a_run_that_ended_while_the_service_was_down_gets_its_exit_status(service_factory) -> None:
    first: Service = service_factory("node-down")
    run = first.api.run_code("echo begin; sleep 1; echo end; exit 7")
    wait_until(lambda: first.api.output(run["id"]) == b"begin\n", 10, "the first line")
    first.kill()
    wait_until(lambda: not first.run_processes(), 10, "the run to end while the service is down")
    second: Service = service_factory("node-down")
    final = second.api.wait_finished(run["id"], timeout_s=15)
    assert final["status"] == "failed" and final["exit_code"] == 7
    assert second.api.output(run["id"]) == b"begin\nend\n"


def test_a_run_whose_process_vanished_is_lost_and_restarted_by_policy(service_factory) -> None:
    first: Service = service_factory("node-lost")
    run = first.api.run_code(
        'echo "attempt $RUNVISOR_ATTEMPT"; sleep 1000',
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_s": 0.1},
    )
    wait_until(lambda: first.api.output(run["id"]) == b"attempt 1\n", 10, "the first attempt")
    first.kill()
    from tests.fix_service import kill_pids

    kill_pids(first.run_processes())  # SIGKILL: the wrapper cannot record an exit status
    wait_until(lambda: not first.run_processes(), 5, "the run's processes to die")
    second: Service = service_factory("node-lost")
    second.api.wait_status(run["id"], "running", timeout_s=15)
    wait_until(lambda: second.api.output(run["id"]).endswith(b"attempt 2\n"), 15, "attempt 2")
    current = second.api.run(run["id"])
    assert [a["reason"] for a in current["attempts"]][:1] == ["lost"]


def test_processes_of_a_run_that_ended_elsewhere_are_killed_at_the_next_start(
    service_factory, database_url: str
) -> None:
    import psycopg

    first: Service = service_factory("node-stale")
    run = first.api.run_code("echo alive; sleep 1000")
    wait_until(lambda: first.api.output(run["id"]) == b"alive\n", 10, "the run to start")
    first.kill()
    leftover = first.run_processes()
    assert leftover
    # Meanwhile the run was ended by someone else (another node, an operator's repair).
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE runs SET status = 'lost', finished_at = now() WHERE id = %s", (run["id"],)
        )
    second: Service = service_factory("node-stale")
    wait_until(lambda: not second.run_processes(), 10, "the stale processes to be killed")
    assert not (second.data_dir / "spool" / str(run["id"])).exists()
    assert second.api.run(run["id"])["status"] == "lost"


def test_a_stop_under_way_is_finished_after_a_restart_of_the_service(service_factory) -> None:
    first: Service = service_factory("node-stopping")
    run = first.api.run_code("trap '' TERM; echo up; sleep 1000")
    wait_until(lambda: first.api.output(run["id"]) == b"up\n", 10, "the run to start")
    assert first.api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 3}).status_code == 202
    assert first.stop() == 0  # inside the grace period: the run still runs
    assert first.run_processes()
    second: Service = service_factory("node-stopping")
    final = second.api.wait_finished(run["id"], timeout_s=10)
    assert final["status"] == "stopped" and len(final["attempts"]) == 1
    wait_until(lambda: not second.run_processes(), 5, "no process of the run left")
