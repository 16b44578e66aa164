"""The Supervisor and its RunActors in this process (fix_in_process.py): the restart policy's
decision as the Supervisor carries it out, a stop that arrives while a run waits for its next
attempt, and a RunActor that fails: its attempt is ended by the Supervisor and restarted by
the policy. RunActors that stop answering are in test_wedged_run_actors.py."""

# Fixtures are imported from fix_in_process and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import time
from typing import Any

import psycopg
import pykka
import pytest

from runvisor import protocol as m
from runvisor.actors.deps import RunDeps
from runvisor.actors.run_actor import RunActor
from runvisor.models import Run, RunStatus
from runvisor.supervisor import actor as supervisor_actor
from runvisor.supervisor.actor import Supervisor
from tests.fix_journal import stored_output
from tests.polling import wait_until
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


class FailsOnItsFirstAttempt(RunActor):
    """Raises in the flush tick that first stored output of attempt 1, as a bug would."""

    def on_receive(self, message: Any) -> Any:
        answer = super().on_receive(message)
        stored = self.pump is not None and self.pump.stored_bytes > 0
        if isinstance(message, m.FlushTick) and self.run.attempt == 1 and stored:
            raise RuntimeError("a failure of the test's RunActor")
        return answer


def test_a_failing_run_actor_has_its_attempt_restarted_by_policy_and_the_supervisor_goes_on(
    database_url: str, deps: RunDeps, start_supervisor: StartSupervisor
) -> None:
    supervisor = start_supervisor(FailsOnItsFirstAttempt)
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
        "the run to end after its RunActor failed",
    )
    assert final.status is RunStatus.SUCCEEDED, final
    assert [(a.attempt, a.reason) for a in final.attempts] == [(1, "actor_failed"), (2, "exited")]
    assert final.restart_count == 1
    assert stored_output(database_url, run_id) == b"attempt 1\nattempt 2\nrecovered\n"
    # The failure stayed with that RunActor: the Supervisor answers and starts runs still.
    assert supervisor.actor_ref.is_alive()
    assert wait_until(lambda: supervisor.running_count().get(timeout=10) == 0, 5, "no actor")
    other = queued_run(database_url, "echo fine", {})
    assert supervisor.start_run(other).get(timeout=10) is True
    assert wait_until(lambda: run_in(deps, other, RunStatus.SUCCEEDED), 10, "the next run")


def test_an_actor_queued_for_the_spawn_lock_is_not_taken_for_wedged(
    database_url: str, deps: RunDeps, supervisor: Any
) -> None:
    # A burst of starts queues RunActors behind the node's one-at-a-time spawn: one that waits
    # longer than the ping timeout (0.5 s here) is busy, not wedged, and its run must not be
    # killed as stuck before it began (seen with 1,000 runs started at once).
    run_id = queued_run(database_url, "echo started late", {})
    with deps.watcher._lock:  # every spawn of the node waits here, as behind a long queue
        assert supervisor.start_run(run_id).get(timeout=10) is True
        # Long enough for the watchdog (it looks every second) to have looked more than once.
        held_until = time.monotonic() + max(2.5, 4 * deps.settings.ping_timeout_s)
        wait_until(lambda: time.monotonic() > held_until, 10, "the lock to be held", poll_s=0.1)
        assert run_in(deps, run_id, RunStatus.RUNNING) is not None  # not ended as stuck
    final = wait_until(
        lambda: run_in(deps, run_id, RunStatus.SUCCEEDED, RunStatus.FAILED), 15, "the run's end"
    )
    assert final.status is RunStatus.SUCCEEDED, final
    assert [(a.reason, a.exit_code) for a in final.attempts] == [("exited", 0)]
    assert stored_output(database_url, run_id) == b"started late\n"


def test_a_freed_slot_is_filled_at_once_and_an_ended_run_costs_no_claim_otherwise(
    database_url: str, deps: RunDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With RUNVISOR_MAX_RUNNING full, the next queued run starts as soon as a run ends (not
    at the next tick); with slots to spare the queue was emptied by the last claim, and the
    end of a run claims nothing (a round trip per run, before)."""
    monkeypatch.setattr(supervisor_actor, "TICK_S", 600.0)  # no tick fills a slot meanwhile
    claims: list[int] = []
    claim_queued = deps.journal.claim_queued

    def counted_claim(**kwargs: Any) -> list[Run]:
        runs = claim_queued(**kwargs)
        claims.append(len(runs))
        return runs

    monkeypatch.setattr(deps.journal, "claim_queued", counted_claim)
    one_slot = dataclasses.replace(
        deps, settings=deps.settings.model_copy(update={"max_running": 1})
    )
    first, second = (queued_run(database_url, "true", {}) for _ in range(2))
    ref = Supervisor.start(deps=one_slot)
    try:
        assert ref.proxy().start_run(first).get(timeout=10) is True  # then no slot is left
        wait_until(lambda: run_in(deps, second, RunStatus.SUCCEEDED), 10, "the second run")
        assert run_in(deps, first, RunStatus.SUCCEEDED)
        assert claims[:2] == [1, 1]  # the second claimed when the first ended
        wait_until(lambda: ref.proxy().running_count().get(timeout=10) == 0, 5, "no actor")
        # the second's end: a claim (the node was full), which found the queue empty
        assert claims == [1, 1, 0]
        third = queued_run(database_url, "true", {})
        ref.tell(m.RunsQueued())
        wait_until(lambda: run_in(deps, third, RunStatus.SUCCEEDED), 10, "the third run")
        wait_until(lambda: ref.proxy().running_count().get(timeout=10) == 0, 5, "no actor")
        # claimed with RunsQueued; one slot, so its end claims again (runs may wait)
        assert claims == [1, 1, 0, 1, 0]
    finally:
        ref.stop(block=True, timeout=10)

    unlimited = Supervisor.start(deps=deps)
    try:
        del claims[:]
        fourth = queued_run(database_url, "true", {})
        unlimited.tell(m.RunsQueued())
        wait_until(lambda: run_in(deps, fourth, RunStatus.SUCCEEDED), 10, "the fourth run")
        wait_until(lambda: unlimited.proxy().running_count().get(timeout=10) == 0, 5, "no actor")
        assert claims == [1]  # with RunsQueued; none at the end
    finally:
        unlimited.stop(block=True, timeout=10)


def test_a_running_attempt_is_looked_after_only_as_often_as_it_needs(
    database_url: str, deps: RunDeps, start_supervisor: StartSupervisor
) -> None:
    """Its output is the output flusher's to store: a RunActor's own tick comes every quarter
    of stuck_after_s (at most a second apart), or every 10 s as a safety net without it, not
    every flush interval (0.05 s here)."""
    ticks: dict[int, int] = {}

    class CountingTicks(RunActor):
        def on_receive(self, message: Any) -> Any:
            if isinstance(message, m.FlushTick):
                ticks[self.run.id] = ticks.get(self.run.id, 0) + 1
            return super().on_receive(message)

    supervisor = start_supervisor(CountingTicks)
    code = "for i in 1 2 3 4 5; do echo $i; sleep 0.5; done"  # never silent for 2 s
    quiet, watched = (queued_run(database_url, code, {}) for _ in range(2))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET stuck_after_s = 2 WHERE id = %s", (watched,))
    assert supervisor.start_run(quiet).get(timeout=10) is True  # both: the queue is filled
    for run_id in (quiet, watched):
        wait_until(lambda r=run_id: run_in(deps, r, RunStatus.SUCCEEDED), 15, "the runs to end")
    assert ticks.get(quiet, 0) == 0
    assert 3 <= ticks[watched] <= 6  # every 0.5 s for 2.5 s
