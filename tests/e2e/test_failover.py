"""Failover within seconds, a paused node that comes back, detach and drain (several nodes on
one PostgreSQL and Redis)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fix_proxy import TcpProxy, proxied_redis_url
from tests.fix_service import OPERATOR, Service, kill_pids, stop_active_runs
from tests.polling import wait_until

TTL_S = 3.0
FAST = {"RUNVISOR_LEASE_TTL_S": str(TTL_S)}
ON_FAILURE = {"policy": "on-failure", "max_restarts": 3, "backoff_s": 0.1}


# Node ids of this module's own: other test sessions on the machine may run a A too, and
# the fixture counts leftover run processes by node id.
A, B = (f"fo{uuid.uuid4().hex[:6]}-{n}" for n in ("a", "b"))


def _at(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _attempt_on(api: Any, run_id: int, attempt: int, node: str) -> dict[str, Any] | None:
    run = api.run(run_id)
    if run["node"] == node and len(run["attempts"]) >= attempt and run["status"] == "running":
        return dict(run)
    return None


def test_a_killed_node_s_run_is_restarted_on_another_node_within_the_ttl_plus_2_s(
    service_factory,
) -> None:
    node_a: Service = service_factory(A, **FAST)
    node_b: Service = service_factory(B, **FAST)
    run = node_a.api.run_code(
        'echo "attempt $RUNVISOR_ATTEMPT on $RUNVISOR_NODE"; sleep 4', restart=ON_FAILURE
    )
    wait_until(
        lambda: node_a.api.output(run["id"]) == f"attempt 1 on {A}\n".encode(), 10, "attempt 1"
    )
    node_a.kill()
    killed_at = time.time()
    kill_pids(node_a.run_processes())  # the machine is gone, and its processes with it
    restarted = wait_until(
        lambda: _attempt_on(node_b.api, run["id"], 2, B), 20, "node-b to restart the run"
    )
    restarted_after = _at(restarted["attempts"][1]["started_at"]) - killed_at
    final = node_b.api.wait_finished(run["id"], timeout_s=20)
    finished_after = time.time() - killed_at
    print(
        f"kill -> restarted on node-b {restarted_after:.2f} s, -> finished {finished_after:.2f} s"
    )
    assert restarted_after <= TTL_S + 2.0, restarted_after
    assert final["status"] == "succeeded" and final["node"] == B, final
    assert [a["reason"] for a in final["attempts"]] == ["lost", "exited"]
    assert node_b.api.output(run["id"]) == f"attempt 1 on {A}\nattempt 2 on {B}\n".encode()


UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


class OtherMachine(Service):
    """A node in a PID namespace of its own: it cannot see (nor kill) the processes of the other
    nodes, as if it ran on another machine. Only a node's own doings end its runs there."""

    def start(self) -> OtherMachine:
        log = open(self.log_path, "ab")  # noqa: SIM115  # kept open by the child
        self.proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-m", "runvisor", "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(self._healthy, 30, f"node {self.node_id} to answer /healthz")
        return self

    def stop(self, timeout_s: float = 30.0) -> int:
        """unshare does not pass SIGTERM on: send it to the service itself."""
        assert self.proc is not None
        if self.proc.poll() is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for pid in children.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
        return self.proc.wait(timeout_s)


@pytest.fixture
def other_machine(database_url: str, redis_server_url: str, redis_prefix: str, data_dir: Path):
    started: list[OtherMachine] = []

    def make(node_id: str, **extra_env: str) -> OtherMachine:
        node = OtherMachine(
            database_url=database_url,
            redis_url=redis_server_url,
            redis_prefix=redis_prefix,
            data_dir=data_dir,
            node_id=node_id,
            extra_env=extra_env,
        )
        started.append(node)
        return node.start()

    yield make
    for node in started:
        stop_active_runs(node)
        node.stop()
        left = node.run_processes()
        kill_pids(left)
        assert not left, f"run processes left behind by {node.node_id}: {left}"


def test_a_paused_node_kills_what_was_taken_over_as_it_resumes(
    service_factory, other_machine
) -> None:
    scan = {**FAST, "RUNVISOR_PROCESS_TRACKING": "scan"}  # no shared cgroup between "machines"
    node_a: Service = service_factory(A, **scan)
    node_b = other_machine(B, **scan)
    # One run silent after its first line (nothing it writes would meet the fence), one that
    # writes while node-a is paused.
    quiet = node_a.api.run_code('echo "attempt $RUNVISOR_ATTEMPT"; sleep 1000', restart=ON_FAILURE)
    chatty = node_a.api.run_code(
        'echo "attempt $RUNVISOR_ATTEMPT"; sleep 2; echo "late $RUNVISOR_ATTEMPT"; sleep 1000',
        restart=ON_FAILURE,
    )
    for run in (quiet, chatty):
        wait_until(lambda r=run: node_a.api.output(r["id"]) == b"attempt 1\n", 10, "attempt 1")
    assert node_a.proc is not None
    node_a.proc.send_signal(signal.SIGSTOP)
    try:
        for run in (quiet, chatty):
            wait_until(lambda r=run: _attempt_on(node_b.api, r["id"], 2, B), 20, "the takeover")
        assert node_a.run_processes(), "node-b cannot reach node-a's processes"
        wait_until(lambda: b"late 2\n" in node_b.api.output(chatty["id"]), 10, "attempt 2's line")
    finally:
        node_a.proc.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    wait_until(lambda: not node_a.run_processes(), 5, "node-a to kill its stale copies")
    print(f"stale copies killed {time.monotonic() - resumed_at:.2f} s after SIGCONT")
    assert node_b.api.output(quiet["id"]) == b"attempt 1\nattempt 2\n"
    assert node_b.api.output(chatty["id"]) == b"attempt 1\nattempt 2\nlate 2\n"
    for run in (quiet, chatty):
        current = node_b.api.run(run["id"])
        assert current["node"] == B and current["status"] == "running"
        assert [a["reason"] for a in current["attempts"]] == ["lost", None]


def test_a_node_cut_off_from_redis_kills_what_was_taken_over_without_waiting_for_redis(
    service_factory, other_machine, redis_server_url: str, redis_proxy: TcpProxy
) -> None:
    scan = {**FAST, "RUNVISOR_PROCESS_TRACKING": "scan"}
    url = proxied_redis_url(redis_server_url, redis_proxy)
    node_a: Service = service_factory(A, redis_url=url, **scan)
    node_b = other_machine(B, **scan)
    run = node_a.api.run_code('echo "attempt $RUNVISOR_ATTEMPT"; sleep 1000', restart=ON_FAILURE)
    wait_until(lambda: node_a.api.output(run["id"]) == b"attempt 1\n", 10, "attempt 1")
    redis_proxy.cut()  # node-a's lease lapses; node-b reaches Redis and takes the run over
    try:
        wait_until(lambda: _attempt_on(node_b.api, run["id"], 2, B), 20, "the takeover")
        # Still cut off: PostgreSQL tells node-a its attempt is no longer its own.
        wait_until(lambda: not node_a.run_processes(), 15, "node-a to kill its stale copy")
    finally:
        redis_proxy.restore()
    assert node_b.api.output(run["id"]) == b"attempt 1\nattempt 2\n"


COUNT = "for i in $(seq 1 16); do echo $i; sleep 0.5; done"
COUNTED = "".join(f"{i}\n" for i in range(1, 17)).encode()


def test_a_detached_node_keeps_its_runs_past_its_lease_and_adopts_them(service_factory) -> None:
    detach = {**FAST, "RUNVISOR_ON_SHUTDOWN": "detach", "RUNVISOR_DETACH_TTL_S": "60"}
    node_a: Service = service_factory(A, **detach)
    node_b: Service = service_factory(B, **FAST)
    run = node_a.api.run_code(COUNT, restart=ON_FAILURE)
    wait_until(lambda: node_a.api.output(run["id"]).startswith(b"1\n"), 10, "the first line")
    assert node_a.stop() == 0
    stopped_at = time.monotonic()
    node = node_b.api.get(f"/api/v1/nodes/{A}").json()
    assert node["state"] == "detached" and node["detached_until"] is not None, node
    # Down for twice the lease and more: node-b must leave the run alone all that time.
    while time.monotonic() - stopped_at < 2 * TTL_S + 1.5:
        current = node_b.api.run(run["id"])
        assert current["node"] == A and len(current["attempts"]) == 1, current
        time.sleep(0.2)
    again: Service = service_factory(A, **detach)
    final = again.api.wait_finished(run["id"], timeout_s=20)
    assert final["status"] == "succeeded" and final["node"] == A
    assert len(final["attempts"]) == 1 and again.api.output(run["id"]) == COUNTED
    assert node_b.api.get(f"/api/v1/nodes/{A}").json()["state"] == "up"


def test_a_node_that_stopped_without_detaching_loses_its_runs_after_its_lease(
    service_factory,
) -> None:
    """The other side of the detach: RUNVISOR_DETACH_TTL_S=0, the lease alone protects."""
    node_a: Service = service_factory(A, **FAST, RUNVISOR_DETACH_TTL_S="0")
    node_b: Service = service_factory(B, **FAST)
    run = node_a.api.run_code('echo "attempt $RUNVISOR_ATTEMPT"; sleep 1000', restart=ON_FAILURE)
    wait_until(lambda: node_a.api.output(run["id"]) == b"attempt 1\n", 10, "attempt 1")
    assert node_a.stop() == 0, node_a.log_tail()
    wait_until(lambda: _attempt_on(node_b.api, run["id"], 2, B), 20, "the takeover")


def test_a_drain_lets_runs_finish_stops_the_rest_at_its_deadline_to_restart_elsewhere(
    service_factory,
) -> None:
    node_a: Service = service_factory(A, **FAST)
    node_b: Service = service_factory(B, **FAST)
    short = node_a.api.run_code('echo "short on $RUNVISOR_NODE"; sleep 2', restart=ON_FAILURE)
    long = node_a.api.run_code(
        'echo "long $RUNVISOR_ATTEMPT on $RUNVISOR_NODE"; sleep 1000', restart=ON_FAILURE
    )
    for run in (short, long):
        node_a.api.wait_status(run["id"], "running")
        assert node_a.api.run(run["id"])["node"] == A
    # Asked of node-b: it reaches node-a through PostgreSQL and node-a's control channel.
    response = node_b.api.post(f"/api/v1/nodes/{A}/drain", json={"deadline_s": 4})
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "draining" and response.json()["drain_deadline"]
    # Claims nothing more: a new run goes to node-b, whichever node it was started on.
    later = node_a.api.run_code('echo "later on $RUNVISOR_NODE"')
    assert node_a.api.wait_finished(later["id"], 15)["node"] == B
    finished = node_a.api.wait_finished(short["id"], 15)
    assert finished["status"] == "succeeded" and finished["node"] == A
    moved = wait_until(lambda: _attempt_on(node_b.api, long["id"], 2, B), 20, "restart")
    assert [a["reason"] for a in moved["attempts"]] == ["drained", None]
    expected = f"long 1 on {A}\nlong 2 on {B}\n".encode()
    wait_until(lambda: node_b.api.output(long["id"]) == expected, 10, "attempt 2's line")
    node = node_b.api.get(f"/api/v1/nodes/{A}").json()
    assert node["state"] == "draining" and node["running"] == 0, node
    assert node_a.stop() == 0
    service_factory(A, **FAST)
    assert node_b.api.get(f"/api/v1/nodes/{A}").json()["state"] == "up"


def test_a_drain_asks_for_a_node_that_is_up(service_factory) -> None:
    node_a: Service = service_factory(A, **FAST)
    api = node_a.api
    assert api.post("/api/v1/nodes/nobody/drain").status_code == 404
    assert api.post(f"/api/v1/nodes/{A}/drain", json={"deadline_s": -1}).status_code == 422
    assert api.post(f"/api/v1/nodes/{A}/drain", token=OPERATOR).status_code == 403
    node_b: Service = service_factory(B, **FAST, RUNVISOR_DETACH_TTL_S="60")
    held = node_b.api.run_code("sleep 1000")
    wait_until(lambda: node_b.run_processes(), 10, "node-b's run")
    assert node_b.stop() == 0  # detached: nothing there to drain
    response = api.post(f"/api/v1/nodes/{B}/drain", json={"deadline_s": 1})
    assert response.status_code == 409 and response.json()["error"]["code"] == "node_not_up"
    again: Service = service_factory(B, **FAST)
    # Drained on itself, without a deadline: its run goes on, and it claims nothing more.
    response = again.api.post(f"/api/v1/nodes/{B}/drain")
    assert response.status_code == 202 and response.json()["drain_deadline"] is None
    later = again.api.run_code("echo hi")
    assert again.api.wait_finished(later["id"], 15)["node"] == A
    stopped = again.api.post(f"/api/v1/runs/{held['id']}/stop", json={"grace_s": 0})
    assert stopped.status_code == 202, stopped.text
    final = again.api.wait_finished(held["id"], 15)
    assert final["status"] == "stopped" and final["node"] == B, again.log_tail()


def test_on_shutdown_drain_stops_what_remains_and_it_restarts_elsewhere(service_factory) -> None:
    drain = {**FAST, "RUNVISOR_ON_SHUTDOWN": "drain", "RUNVISOR_DRAIN_TIMEOUT_S": "1"}
    node_a: Service = service_factory(A, **drain)
    node_b: Service = service_factory(B, **FAST)
    run = node_a.api.run_code('echo "attempt $RUNVISOR_ATTEMPT"; sleep 1000', restart=ON_FAILURE)
    wait_until(lambda: node_a.api.output(run["id"]) == b"attempt 1\n", 10, "attempt 1")
    assert node_a.stop() == 0
    assert not node_a.run_processes()
    assert node_b.api.get(f"/api/v1/nodes/{A}").json()["state"] == "stopped"
    moved = wait_until(lambda: _attempt_on(node_b.api, run["id"], 2, B), 15, "restart")
    assert [a["reason"] for a in moved["attempts"]] == ["drained", None]
