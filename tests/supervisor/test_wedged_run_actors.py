"""RunActors that stop answering (wedged), in this process (fix_in_process.py): the Supervisor
finds them by its pings, kills the attempt and ends it `stuck` itself (the closer), storing
what the spool holds first, also when PostgreSQL is down meanwhile; a wedged RunActor that
wakes up later stands down and writes nothing over the run's newer record. The output flusher
stores a wedged RunActor's output meanwhile, as any other's.

The wedge is a RunActor subclass that blocks its own thread, outside any store call, in the
first message it handles once output of attempt 1 is stored (a ping, a tick), until the test
releases it."""

# Fixtures are imported from fix_in_process and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pykka
import pytest
from structlog.testing import capture_logs

from runvisor.actors.deps import RunDeps
from runvisor.actors.run_actor import RunActor
from runvisor.errors import StoreUnavailable
from runvisor.models import Run, RunStatus
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.actor import Supervisor
from tests.fix_journal import stored_output
from tests.fix_proxy import TcpProxy
from tests.polling import wait_until
from tests.procs.fix_processes import live_tree
from tests.supervisor.fix_in_process import (  # noqa: F401
    StartSupervisor,
    deps,
    journal_through_proxy,
    journal_url,
    journal_waits,
    ping_timeout_s,
    queued_run,
    run_in,
    start_supervisor,
    supervisor,
)

STANDS_DOWN = "attempt superseded; this actor stands down"
WEDGE_MAX_S = 60.0  # a test that fails before it releases the wedge: the thread ends anyway


class Wedge:
    """Where a test holds a wedged RunActor: it blocks until `release`, and says when it
    began (`entered`) and which actor it is (`actor_ref`)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.actor_ref: pykka.ActorRef[Any] | None = None

    def run_actor_class(self) -> type[RunActor]:
        wedge = self

        class WedgedOnItsFirstAttempt(RunActor):
            def on_receive(self, message: Any) -> Any:
                answer = super().on_receive(message)
                stored = self.pump is not None and self.pump.stored_bytes > 0
                first = self.run.attempt == 1  # any message: a ping, a tick
                if first and stored and not wedge.entered.is_set():
                    wedge.actor_ref = self.actor_ref
                    wedge.entered.set()
                    wedge.released.wait(WEDGE_MAX_S)
                return answer

        return WedgedOnItsFirstAttempt

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def wedge() -> Iterator[Wedge]:
    wedge = Wedge()
    yield wedge
    wedge.release()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every event logged meanwhile, from any thread."""
    with capture_logs() as entries:
        yield entries


def taken_for_stuck(logs: list[dict[str, Any]], run_id: int) -> bool:
    """Whether the watchdog has taken the RunActor of `run_id` for wedged."""
    return any(
        e["event"].startswith("run actor does not answer") and e.get("run_id") == run_id
        for e in list(logs)
    )


def stood_down(logs: list[dict[str, Any]], wedge: Wedge, run_id: int) -> bool:
    """Whether the woken RunActor of attempt 1 has stood down and ended."""
    said = any(
        e["event"] == STANDS_DOWN and e.get("run_id") == run_id and e.get("attempt") == 1
        for e in list(logs)
    )
    return said and wedge.actor_ref is not None and not wedge.actor_ref.is_alive()


def run_once_reachable(deps: RunDeps, run_id: int) -> Run | None:
    """The run once it failed; None also while the journal's pool reconnects to PostgreSQL."""
    try:
        return run_in(deps, run_id, RunStatus.FAILED)
    except StoreUnavailable:
        return None


def lines(count: int) -> bytes:
    """What `seq 1 COUNT | sed "s/^/line /"` prints."""
    return b"".join(f"line {i}\n".encode() for i in range(1, count + 1))


def test_a_wedged_run_actor_is_found_by_ping_and_its_attempt_restarted(
    database_url: str,
    deps: RunDeps,
    start_supervisor: StartSupervisor,
    wedge: Wedge,
    logs: list[dict[str, Any]],
) -> None:
    supervisor = start_supervisor(wedge.run_actor_class())
    code = (
        'echo attempt $RUNVISOR_ATTEMPT; if [ "$RUNVISOR_ATTEMPT" = 1 ]; then sleep 60; fi;'
        " echo recovered"
    )
    run_id = queued_run(
        database_url, code, {"policy": "on-failure", "max_restarts": 2, "backoff_s": 0.1}
    )
    assert supervisor.start_run(run_id).get(timeout=10) is True

    final = wait_until(
        lambda: run_in(deps, run_id, RunStatus.SUCCEEDED, RunStatus.FAILED),
        20,
        "the run to end after its first RunActor was wedged",
    )
    assert wedge.entered.is_set() and not wedge.released.is_set()
    assert final.status is RunStatus.SUCCEEDED, final
    assert [(a.attempt, a.reason) for a in final.attempts] == [(1, "stuck"), (2, "exited")]
    assert stored_output(database_url, run_id) == b"attempt 1\nattempt 2\nrecovered\n"

    # Woken, the old RunActor finds its attempt superseded: it must not overwrite the newer
    # attempt's record nor its output.
    wedge.release()
    wait_until(lambda: stood_down(logs, wedge, run_id), 15, "the woken actor to stand down")
    again = run_in(deps, run_id, RunStatus.SUCCEEDED)
    assert again is not None and again.attempts == final.attempts
    assert stored_output(database_url, run_id) == b"attempt 1\nattempt 2\nrecovered\n"
    assert supervisor.actor_ref.is_alive()


@pytest.mark.parametrize("ping_timeout_s", [2.0])
def test_output_written_while_a_run_actor_is_wedged_is_stored_all_the_same(
    database_url: str,
    deps: RunDeps,
    start_supervisor: StartSupervisor,
    wedge: Wedge,
    logs: list[dict[str, Any]],
    shared_dir: Path,
) -> None:
    go, written = shared_dir / "go", shared_dir / "written"
    code = (
        f"echo start; while [ ! -e {go} ]; do sleep 0.02; done;"
        f' seq 1 3000 | sed "s/^/line /"; touch {written}; sleep 60'
    )
    printed = b"start\n" + lines(3000)
    supervisor = start_supervisor(wedge.run_actor_class())
    run_id = queued_run(database_url, code, {})
    assert supervisor.start_run(run_id).get(timeout=10) is True

    assert wedge.entered.wait(10), "the RunActor to be wedged"
    go.touch()  # the lines are written while their RunActor is wedged
    wait_until(written.exists, 5, "the lines to be written")
    # The output flusher stores them: no RunActor needs to be awake for that.
    wait_until(lambda: stored_output(database_url, run_id) == printed, 10, "the lines stored")

    final = wait_until(lambda: run_in(deps, run_id, RunStatus.FAILED), 15, "the stuck verdict")
    assert [(a.attempt, a.reason) for a in final.attempts] == [(1, "stuck")]
    assert stored_output(database_url, run_id) == printed
    assert final.output_bytes == len(printed)

    wedge.release()
    wait_until(lambda: stood_down(logs, wedge, run_id), 15, "the woken actor to stand down")
    assert stored_output(database_url, run_id) == printed


@pytest.mark.parametrize("ping_timeout_s", [2.0])
@pytest.mark.parametrize("journal_through_proxy", [True], ids=["journal-through-pg-proxy"])
def test_a_wedged_attempt_ended_while_postgres_is_down_keeps_its_spool_until_stored(
    database_url: str,
    deps: RunDeps,
    start_supervisor: StartSupervisor,
    wedge: Wedge,
    logs: list[dict[str, Any]],
    shared_dir: Path,
    pg_proxy: TcpProxy,
) -> None:
    go, written = shared_dir / "go", shared_dir / "written"
    code = (
        f"echo start; while [ ! -e {go} ]; do sleep 0.02; done;"
        f' seq 1 3000 | sed "s/^/line /"; touch {written}; sleep 60'
    )
    printed = b"start\n" + lines(3000)
    supervisor = start_supervisor(wedge.run_actor_class())
    run_id = queued_run(database_url, code, {})
    assert supervisor.start_run(run_id).get(timeout=10) is True
    spool = deps.spool.output(run_id, 1)

    assert wedge.entered.wait(10), "the RunActor to be wedged"
    running = run_in(deps, run_id, RunStatus.RUNNING)
    attempt = running.current_attempt if running else None
    assert attempt is not None
    go.touch()
    wait_until(written.exists, 5, "the lines to be written")
    pg_proxy.cut()  # before the verdict: the ping timeout has 2 s to run yet
    try:
        # Killed before any store is asked; the spool is kept while the end is not recorded.
        wait_until(
            lambda: not live_tree(attempt.process_marker), 15, "the wedged attempt to be killed"
        )
        assert spool.read_bytes() == printed
        with psycopg.connect(database_url) as conn:  # past the proxy: what PostgreSQL holds
            row = conn.execute(
                "SELECT status, output_bytes FROM runs WHERE id = %s", (run_id,)
            ).fetchone()
        # Its end is not recorded; of the lines, what the flusher stored before the cut.
        assert row is not None and row[0] == "running" and row[1] <= len(printed)
    finally:
        pg_proxy.restore()

    final = wait_until(lambda: run_once_reachable(deps, run_id), 20, "the end recorded")
    assert [(a.attempt, a.reason) for a in final.attempts] == [(1, "stuck")]
    assert stored_output(database_url, run_id) == printed
    wait_until(lambda: not spool.exists(), 10, "the spool to be removed once stored")

    wedge.release()
    wait_until(lambda: stood_down(logs, wedge, run_id), 15, "the woken actor to stand down")
    assert stored_output(database_url, run_id) == printed


@pytest.mark.parametrize("journal_waits", [StoreWaits()], ids=["unseen-by-the-watchdog"])
def test_a_wedged_run_actor_has_its_attempt_killed_by_the_supervisor_and_ended_once(
    database_url: str,
    deps: RunDeps,
    supervisor: pykka.ActorProxy[Supervisor],
    shared_dir: Path,
    logs: list[dict[str, Any]],
) -> None:
    # The RunActor will block in a PostgreSQL call the watchdog cannot see (its journal marks
    # its calls elsewhere), the end of its attempt: to the watchdog, a RunActor that stopped
    # answering outside any store call. (Its output is the flusher's to store, not its own.)
    go = shared_dir / "go"
    code = f"while [ ! -e {go} ]; do sleep 0.05; done; echo late; exit 3"
    run_id = queued_run(database_url, code, {})
    assert supervisor.start_run(run_id).get(timeout=10) is True
    running = wait_until(
        lambda: (r := run_in(deps, run_id, RunStatus.RUNNING)) and r.pid and r,
        10,
        "the attempt's process to be recorded",
    )
    attempt = running.current_attempt
    assert attempt is not None

    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
        go.touch()  # it ends; its RunActor's end waits for the row this transaction holds
        # Wedged after 0.5 s without an answer: the closer kills the attempt's processes
        # first (what is left of them), before it asks any store.
        wait_until(lambda: taken_for_stuck(logs, run_id), 10, "the RunActor taken for wedged")
        wait_until(
            lambda: not live_tree(attempt.process_marker), 10, "the wedged attempt to be killed"
        )
        assert run_in(deps, run_id, RunStatus.RUNNING) is not None  # nothing recorded yet
        conn.rollback()

    ended = wait_until(lambda: run_in(deps, run_id, RunStatus.FAILED), 15, "the end to be recorded")
    # Once the row is free, the closer and the woken RunActor both go for the end; the fence
    # lets exactly one record it: `stuck` (the closer) or the SIGKILL the RunActor finds.
    assert len(ended.attempts) == 1 and ended.attempts[0].finished_at is not None
    assert ended.attempts[0].reason in ("stuck", "exited") and ended.attempts[0].signal in (None, 9)
    assert wait_until(
        lambda: supervisor.running_count().get(timeout=10) == 0, 10, "the wedged actor to go"
    )
