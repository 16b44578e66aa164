"""The Supervisor and its RunActors in this process, with the real PostgreSQL and Redis of the
test (a database and a key prefix of its own) and no node around them: no HTTP, no
subprocess of runvisor. The restart policy's decision as the Supervisor carries it out, a
stop that arrives while a run waits for its next attempt, and a RunActor that stops answering
outside any store call (wedged)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pykka
import pytest

from runvisor.actors.deps import RunDeps
from runvisor.actors.flush_nudger import FlushNudger
from runvisor.actors.timer import TimerService
from runvisor.config import load_settings
from runvisor.models import Run, RunStatus
from runvisor.procs.exit_watcher import ExitWatcher
from runvisor.store.journal import open_journal
from runvisor.store.live import LiveState, redis_client
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.actor import Supervisor
from tests.polling import wait_until
from tests.procs.fix_processes import live_tree


@pytest.fixture
def journal_waits() -> StoreWaits | None:
    """Where the journal marks its calls; None: in the StoreWaits the watchdog reads, as in
    the service."""
    return None


@pytest.fixture
def deps(
    database_url: str,
    redis_server_url: str,
    redis_prefix: str,
    data_dir: Path,
    journal_waits: StoreWaits | None,
) -> Iterator[RunDeps]:
    settings = load_settings(
        {},
        data_dir=data_dir,
        node_id=f"in-process-{uuid.uuid4().hex[:8]}",
        redis_prefix=redis_prefix,
        flush_interval_s=0.05,
        ping_timeout_s=0.5,
    )
    settings.spool_dir.mkdir(mode=0o700)
    settings.work_dir.mkdir(mode=0o711)
    timers, watcher, nudger = TimerService(), ExitWatcher(), FlushNudger()
    for service in (timers, watcher, nudger):
        service.start()
    store_waits = StoreWaits()
    journal = open_journal(
        database_url, node_id=settings.node_id, store_waits=journal_waits or store_waits
    )
    live = LiveState(
        redis_client(redis_server_url), RedisKeys(redis_prefix), store_waits=store_waits
    )
    yield RunDeps(
        settings=settings,
        journal=journal,
        live=live,
        timers=timers,
        watcher=watcher,
        nudger=nudger,
        store_waits=store_waits,
    )
    live.close()
    journal.close()
    for service in (nudger, watcher, timers):
        service.stop()


@pytest.fixture
def supervisor(deps: RunDeps) -> Iterator[pykka.ActorProxy[Supervisor]]:
    ref = Supervisor.start(deps=deps)
    proxy = ref.proxy()
    yield proxy
    ref.stop(block=True, timeout=10)


def queued_run(database_url: str, code: str, restart: dict[str, object]) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        command = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES (%s, 1000000) RETURNING id",
            (code,),
        ).fetchone()
        assert command is not None
        run = conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes, restart)"
            " VALUES (%s, %s, 1000000, %s) RETURNING id",
            (command[0], code, json.dumps(restart)),
        ).fetchone()
    assert run is not None
    return int(run[0])


def run_in(deps: RunDeps, run_id: int, *statuses: RunStatus) -> Run | None:
    run = deps.journal.get_run(run_id)
    return run if run is not None and run.status in statuses else None


def test_a_failed_attempt_is_restarted_by_the_policy_until_its_budget_is_spent(
    database_url: str, deps: RunDeps, supervisor: pykka.ActorProxy[Supervisor]
) -> None:
    run_id = queued_run(
        database_url, "exit 3", {"policy": "on-failure", "max_restarts": 1, "backoff_s": 0.1}
    )
    assert supervisor.start_run(run_id).get(timeout=10) is True

    final = wait_until(
        lambda: run_in(deps, run_id, RunStatus.FAILED), 15, "the run to fail after one restart"
    )
    assert final.attempt == 2 and final.restart_count == 1 and final.exit_code == 3
    assert [(a.attempt, a.exit_code, a.reason) for a in final.attempts] == [
        (1, 3, "exited"),
        (2, 3, "exited"),
    ]
    assert wait_until(lambda: supervisor.running_count().get(timeout=10) == 0, 5, "no actor")
    assert not deps.spool.run_spool(run_id).exists()


def test_a_stop_during_the_backoff_cancels_the_restart_and_ends_the_run_stopped(
    database_url: str, deps: RunDeps, supervisor: pykka.ActorProxy[Supervisor]
) -> None:
    run_id = queued_run(database_url, "exit 1", {"policy": "always", "backoff_s": 30})
    assert supervisor.start_run(run_id).get(timeout=10) is True
    restarting = wait_until(
        lambda: run_in(deps, run_id, RunStatus.RESTARTING), 10, "the run to wait for a restart"
    )
    assert restarting.next_attempt_at is not None

    with psycopg.connect(database_url, autocommit=True) as conn:  # as the HTTP side records it
        conn.execute(
            "UPDATE runs SET stop_requested_by = 'tester', stop_requested_at = now(),"
            " stop_grace_s = 1 WHERE id = %s",
            (run_id,),
        )
    assert supervisor.stop_run(run_id, 1.0, "tester").get(timeout=10) is True

    stopped = run_in(deps, run_id, RunStatus.STOPPED)
    assert stopped is not None and stopped.attempt == 1 and len(stopped.attempts) == 1
    assert stopped.reason == "stopped by tester while waiting to restart"
    assert run_id not in supervisor.restarts.get(timeout=10)  # its RestartDue was cancelled
    # A restart still scheduled would claim the run again: nothing may, so none is left.
    assert supervisor.start_run(run_id).get(timeout=10) is False
    assert run_in(deps, run_id, RunStatus.STOPPED) is not None


@pytest.mark.parametrize("journal_waits", [StoreWaits()], ids=["unseen-by-the-watchdog"])
def test_a_wedged_run_actor_has_its_attempt_killed_by_the_supervisor_and_ended_once(
    database_url: str,
    deps: RunDeps,
    supervisor: pykka.ActorProxy[Supervisor],
    shared_dir: Path,
) -> None:
    # The RunActor will block in a PostgreSQL call the watchdog cannot see (its journal marks
    # its calls elsewhere): to the watchdog, a RunActor that stopped answering outside any
    # store call.
    go = shared_dir / "go"
    run_id = queued_run(
        database_url, f"while [ ! -e {go} ]; do sleep 0.05; done; echo late; sleep 60", {}
    )
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
        go.touch()  # its output now waits for the row this transaction holds
        # Wedged after 0.5 s without an answer: the closer kills the attempt's processes
        # first, before it asks any store.
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
