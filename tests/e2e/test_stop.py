"""Stop: SIGTERM to everything of the run, SIGKILL after the grace period, zero survivors.

Survivors are looked for in /proc (by the run's environment and by the pids the run itself
wrote down), not through the API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fix_service import Api, Service, processes_with_env, wait_until

GRACE_S = 2.0


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def run_pids(service: Service, run_id: int) -> set[int]:
    ours = set(service.run_processes())
    return {pid for pid in processes_with_env(f"RUNVISOR_RUN_ID={run_id}") if pid in ours}


def read_pids(directory: Path) -> set[int]:
    return {int(p.read_text()) for p in directory.glob("*.pid") if p.read_text().strip()}


CASES = {
    "background job": "sleep 1000 & echo $! > {d}/bg.pid; echo ready; wait",
    "setsid grandchild": "setsid sleep 1000 & echo $! > {d}/sid.pid; echo ready; wait",
    "double-forked daemon": (
        "( setsid bash -c 'echo $$ > {d}/daemon.pid; exec sleep 1000' & ) ; echo ready; sleep 1000"
    ),
    "ignores SIGTERM": "trap '' TERM; echo $$ > {d}/main.pid; echo ready; sleep 1000",
    "traps SIGTERM and goes on": (
        "trap 'echo got TERM' TERM; echo $$ > {d}/main.pid; echo ready;"
        " while true; do sleep 0.1; done"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stop_leaves_zero_survivors(service: Service, shared_dir: Path, case: str) -> None:
    api = service.api
    pid_dir = shared_dir / "pids"
    pid_dir.mkdir(mode=0o777)
    pid_dir.chmod(0o777)
    run = api.run_code(CASES[case].format(d=pid_dir))
    wait_until(lambda: b"ready" in api.output(run["id"]), 10, "the run to be ready")
    wait_until(lambda: read_pids(pid_dir), 5, "the run to write its pids")
    before = run_pids(service, run["id"]) | read_pids(pid_dir)
    assert len(before) >= 2, before

    started = time.monotonic()
    response = api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": GRACE_S})
    assert response.status_code == 202, response.text
    wait_until(
        lambda: not any(alive(pid) for pid in before) and not run_pids(service, run["id"]),
        GRACE_S + 1.0,
        f"every process of the run to be gone ({case})",
        poll_s=0.02,
    )
    assert time.monotonic() - started <= GRACE_S + 1.0
    final = api.wait_finished(run["id"], timeout_s=5)
    assert final["status"] == "stopped"
    assert final["stop_requested_by"].startswith("admin:")
    assert final["finished_at"] is not None


def test_stop_is_idempotent_and_a_finished_run_answers_409(api: Api) -> None:
    run = api.run_code("sleep 1000")
    api.wait_status(run["id"], "running")
    first = api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 5})
    second = api.post(f"/api/v1/runs/{run['id']}/stop")
    assert first.status_code == 202 and second.status_code in (202, 409)
    final = api.wait_finished(run["id"], timeout_s=10)
    assert final["status"] == "stopped" and final["signal"] == 15
    again = api.post(f"/api/v1/runs/{run['id']}/stop")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "run_finished"


def test_an_operator_may_stop_and_a_viewer_may_not(service: Service) -> None:
    from tests.fix_service import OPERATOR, VIEWER

    api = service.api
    run = api.run_code("sleep 1000")
    denied = api.post(f"/api/v1/runs/{run['id']}/stop", token=VIEWER)
    assert denied.status_code == 403
    assert api.run(run["id"])["status"] in ("queued", "running")
    allowed = api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0}, token=OPERATOR)
    assert allowed.status_code == 202
    final = api.wait_finished(run["id"])
    assert final["status"] == "stopped" and final["stop_requested_by"].startswith("operator:")


def test_stopping_a_queued_run_ends_it_without_starting_it(service_factory) -> None:
    service = service_factory(RUNVISOR_MAX_RUNNING="1")
    api = service.api
    blocker = api.run_code("sleep 1000")
    api.wait_status(blocker["id"], "running")
    marker = f"never-started-{os.getpid()}"
    queued = api.run_code(f"echo {marker}")
    assert api.run(queued["id"])["status"] == "queued"
    response = api.post(f"/api/v1/runs/{queued['id']}/stop")
    assert response.status_code == 202 and response.json()["status"] == "stopped"
    api.post(f"/api/v1/runs/{blocker['id']}/stop", json={"grace_s": 0})
    api.wait_finished(blocker["id"])
    stopped = api.run(queued["id"])
    assert stopped["status"] == "stopped" and stopped["attempts"] == []
    assert stopped["started_at"] is None and api.output(queued["id"]) == b""


def test_a_leftover_background_job_is_killed_and_counted_when_the_main_process_exits(
    service: Service,
    shared_dir: Path,
) -> None:
    api = service.api
    run = api.run_code(f"sleep 1000 & echo $! > {shared_dir}/bg.pid; echo main done")
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded"
    bg = int((shared_dir / "bg.pid").read_text())
    wait_until(lambda: not alive(bg), 5, "the background job to be killed")
    assert final["attempts"][0]["leftovers_killed"] >= 1


@pytest.mark.parametrize("tracking", ["cgroup", "scan"])
def test_a_stop_sends_sigterm_once_to_each_process(service_factory, tracking: str) -> None:
    """Each process of the run gets one SIGTERM, not one for its process group and another as
    a member of the attempt: a trap that goes on would run twice (a race, so eight runs)."""
    service: Service = service_factory(RUNVISOR_PROCESS_TRACKING=tracking)
    api = service.api
    code = (
        "trap 'echo trapped' TERM; echo ready; n=0;"
        " while [ $n -lt 40 ]; do sleep 0.1; n=$((n+1)); done"
    )
    runs = [api.run_code(code) for _ in range(8)]
    for run in runs:
        wait_until(lambda run=run: b"ready" in api.output(run["id"]), 10, "the run to be ready")
    for run in runs:
        response = api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 30})
        assert response.status_code == 202, response.text
    for run in runs:  # the trap goes on: the loop ends by itself, 4 s after its start
        assert api.wait_finished(run["id"], timeout_s=15)["status"] == "stopped"
    # (bash also says "Terminated" for its `sleep`, which SIGTERM ended)
    assert [api.output(run["id"]).count(b"trapped") for run in runs] == [1] * 8
