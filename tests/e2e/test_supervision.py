"""Supervision: timeouts, stuck attempts, restart policies, a failing RunActor, the queue."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from tests.fix_service import Api, Service, wait_until


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_a_timeout_ends_the_run_timed_out_and_leaves_no_process(service: Service) -> None:
    api = service.api
    run = api.run_code("sleep 30", timeout_s=1)
    started = time.monotonic()
    final = api.wait_finished(run["id"], timeout_s=10)
    assert time.monotonic() - started < 2.5
    assert final["status"] == "timed_out"
    assert final["attempts"][0]["reason"] == "timed_out"
    wait_until(lambda: not service.run_processes(), 2, "no process of the run")


def test_stuck_attempts_are_restarted_by_policy_then_the_run_fails(api: Api) -> None:
    run = api.run_code(
        "echo start; sleep 60",
        stuck_after_s=1,
        restart={"policy": "on-failure", "max_restarts": 2, "window_s": 60, "backoff_s": 0.2},
    )
    final = api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "failed"
    assert "restart intensity" in final["reason"]
    attempts = final["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert all(a["reason"] == "stuck" for a in attempts)
    assert final["restart_count"] == 2
    output = api.output(run["id"])
    assert output == b"start\n" * 3
    for a in attempts:  # each attempt's output begins where it says
        assert output[a["output_offset"] :].startswith(b"start\n")


def test_always_restarts_with_growing_gaps_until_the_intensity_limit(api: Api) -> None:
    run = api.run_code(
        "echo attempt $RUNVISOR_ATTEMPT; exit 1",
        restart={
            "policy": "always",
            "max_restarts": 3,
            "window_s": 60,
            "backoff_s": 0.2,
            "backoff_max_s": 1,
        },
    )
    final = api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "failed" and "restart intensity" in final["reason"]
    attempts = final["attempts"]
    assert len(attempts) == 4 and all(a["exit_code"] == 1 for a in attempts)
    gaps = [ts(b["started_at"]) - ts(a["finished_at"]) for a, b in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1], gaps
    assert gaps[-1] <= 1.0 * 1.1 + 0.5  # the cap, with jitter and scheduling slack
    assert api.output(run["id"]) == b"attempt 1\nattempt 2\nattempt 3\nattempt 4\n"


def test_on_failure_does_not_restart_a_success(api: Api) -> None:
    run = api.run_code("echo fine", restart={"policy": "on-failure", "max_restarts": 5})
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded" and len(final["attempts"]) == 1


def test_restarting_shows_next_attempt_at_and_a_stop_then_ends_it(api: Api) -> None:
    run = api.run_code(
        "exit 2",
        restart={"policy": "always", "max_restarts": 5, "backoff_s": 30, "backoff_max_s": 60},
    )
    waiting = api.wait_status(run["id"], "restarting", timeout_s=10)
    assert waiting["next_attempt_at"] is not None and waiting["restart_count"] == 1
    assert api.post(f"/api/v1/runs/{run['id']}/stop").status_code == 202
    final = api.wait_finished(run["id"], timeout_s=5)
    assert final["status"] == "stopped" and len(final["attempts"]) == 1


def test_max_running_queues_runs_in_order_and_a_stopped_queued_run_never_starts(
    service_factory,
) -> None:
    service = service_factory(RUNVISOR_MAX_RUNNING="2")
    api = service.api
    command = api.create_command("sleep 1; echo done $RUNVISOR_RUN_ID")
    runs = [api.start_run(command["id"]) for _ in range(5)]
    statuses = [api.run(r["id"])["status"] for r in runs]
    assert statuses.count("running") == 2 and statuses.count("queued") == 3, statuses
    assert statuses[:2] == ["running", "running"]
    stopped = api.post(f"/api/v1/runs/{runs[4]['id']}/stop")
    assert stopped.status_code == 202 and stopped.json()["status"] == "stopped"
    finals = [api.wait_finished(r["id"], timeout_s=30) for r in runs]
    assert [f["status"] for f in finals] == ["succeeded"] * 4 + ["stopped"]
    assert finals[4]["attempts"] == [] and api.output(runs[4]["id"]) == b""
    starts = [ts(f["started_at"]) for f in finals[:4]]
    assert starts == sorted(starts)  # in start order
    for f in finals[:4]:
        assert api.output(f["id"]) == f"done {f['id']}\n".encode()


def test_supervisor_decisions_are_audited(service_factory, database_url: str) -> None:
    import psycopg

    service = service_factory()
    api = service.api
    run = api.run_code("exit 1", restart={"policy": "always", "max_restarts": 1, "backoff_s": 0.1})
    final = api.wait_finished(run["id"], timeout_s=15)
    assert final["status"] == "failed"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT actor, action, detail FROM audit WHERE run_id = %s ORDER BY id", (run["id"],)
        ).fetchall()
    actions = [r[1] for r in rows]
    assert actions[0] == "run.create" and rows[0][0].startswith("admin:")
    assert "run.restarting" in actions and actions[-1] == "run.failed"
    restart = next(r for r in rows if r[1] == "run.restarting")
    assert restart[0] == f"node:{service.node_id}" and restart[2]["restart_delay_s"] > 0
    assert restart[2]["reason"] == "exited" and restart[2]["exit_code"] == 1


def test_a_stop_outranks_a_stuck_verdict_under_way(service_factory) -> None:
    service = service_factory(RUNVISOR_DEFAULT_GRACE_S="30")
    api = service.api
    run = api.run_code(
        "trap '' TERM; echo started; sleep 1000",
        stuck_after_s=1,
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_s": 0.1},
    )
    wait_until(lambda: "attempt stuck" in service.log_tail(100), 15, "the stuck verdict")
    assert api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0}).status_code == 202
    final = api.wait_finished(run["id"], timeout_s=10)
    assert final["status"] == "stopped" and len(final["attempts"]) == 1, final
    assert final["reason"].startswith("stopped by admin:")


def test_restarts_count_against_max_running(service_factory) -> None:
    service = service_factory(RUNVISOR_MAX_RUNNING="1")
    api = service.api
    flaky = api.run_code(
        "sleep 0.3; exit 1", restart={"policy": "always", "max_restarts": 2, "backoff_s": 0.1}
    )
    other = api.run_code("sleep 0.3")
    finals = [api.wait_finished(r["id"], timeout_s=30) for r in (flaky, other)]
    spans = [(ts(a["started_at"]), ts(a["finished_at"])) for f in finals for a in f["attempts"]]
    spans.sort()
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        assert s2 >= e1 - 0.05, f"two attempts ran at once with MAX_RUNNING=1: {spans}"


def test_a_run_actor_that_cannot_start_fails_the_run_and_frees_its_slot(service_factory) -> None:
    service = service_factory(RUNVISOR_MAX_RUNNING="1")
    api = service.api
    # A file where the run's spool directory must go: its RunActor fails in on_start.
    command = api.create_command("echo never")
    (service.data_dir / "spool").mkdir(exist_ok=True)
    next_id = api.get("/api/v1/runs").json()["total"] + 1
    blocker = service.data_dir / "spool" / str(next_id)
    blocker.write_text("in the way")
    try:
        broken = api.start_run(command["id"])
        assert broken["id"] == next_id
        final = api.wait_finished(broken["id"], timeout_s=20)
        assert final["status"] == "failed" and final["attempts"][0]["reason"] == "actor_failed"
    finally:
        blocker.unlink()
    fine = api.wait_finished(api.run_code("echo fine")["id"], timeout_s=20)
    assert fine["status"] == "succeeded"
