"""The end of an attempt, one way for its RunActor and for the Supervisor (which ends an
attempt whose RunActor cannot): the restart policy decides what becomes of the run, PostgreSQL
records the attempt's end and the run's status (fenced by node and attempt), then the state is
published and the attempt's files are removed. Killing what is left and storing the spool come
before, each caller its own way; see docs/architecture.md (The life of an attempt)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from structlog.stdlib import BoundLogger

from runvisor import metrics
from runvisor.actors.deps import RunDeps
from runvisor.models import AttemptEndReason, Run, RunStatus
from runvisor.policy import Decision, attempt_history, decide
from runvisor.procs.attempt_processes import AttemptProcesses
from runvisor.procs.spawn import ExitStatus
from runvisor.procs.spool import SpoolLayout
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.output_writes import HeldOutput


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as its RunActor (or the Supervisor, in its stead) saw it."""

    exit: ExitStatus
    reason: AttemptEndReason
    started_at: float  # time.time() when the attempt started
    leftovers_killed: int
    end_mechanism: str  # how its leftovers were found: `cgroup` or `scan` (a metric's label)
    stop_by: str | None = None  # who stopped it (reason STOPPED)
    spawn_error: str | None = None  # why its process could not start


@dataclass(frozen=True, slots=True)
class Recorded:
    """The run as PostgreSQL took the end of its attempt."""

    status: RunStatus  # terminal, or RESTARTING
    reason: str | None  # the run's reason
    restart_delay_s: float | None  # set when RESTARTING

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


def end_attempt(
    journal: RunJournal,
    live: LiveState,
    spool: SpoolLayout,
    run: Run,
    outcome: Outcome,
    *,
    procs: AttemptProcesses | None,
    live_state: Callable[[RunStatus], dict[str, Any]],
    log: BoundLogger,
    on_recorded: Callable[[Recorded], None],
    output: HeldOutput | None = None,
) -> Recorded | None:
    """End the attempt `run.attempt`: decide and record (record_end), then `on_recorded`
    (the RunActor tells the Supervisor there, before a stop can look for the run), release
    the attempt's cgroup (`procs`; None when the caller removed it already), publish
    `live_state(status)`, and remove the run's directories if it ended, else the attempt's
    spool files. None if this node lost the run meanwhile: nothing else is done. Raises
    StoreUnavailable, and then nothing is recorded and nothing deleted. `output`: the
    attempt's last batch of output, stored in the same transaction."""
    recorded = record_end(journal, run, outcome, output)
    if recorded is None:
        return None
    metrics.attempt_ended(
        mechanism=outcome.end_mechanism, reason=outcome.reason, run_status=recorded.status
    )
    on_recorded(recorded)
    if procs is not None:
        release_cgroup(procs, log)
    live.publish_state(run.id, live_state(recorded.status), terminal=recorded.is_terminal)
    if recorded.is_terminal:
        spool.remove_run(run.id)
    else:
        spool.remove_attempt(run.id, run.attempt)
    return recorded


def record_end(
    journal: RunJournal, run: Run, outcome: Outcome, output: HeldOutput | None = None
) -> Recorded | None:
    """Decide by the restart policy and record; None if this node lost the run meanwhile.
    Raises StoreUnavailable, and then nothing is recorded."""
    succeeded = outcome.spawn_error is None and outcome.exit.succeeded
    now = time.time()
    history = attempt_history(run, started_at=outcome.started_at, ended_at=now, succeeded=succeeded)
    decision = decide(
        run.restart_policy, reason=outcome.reason, succeeded=succeeded, attempts=history, now=now
    )
    run_reason = outcome.spawn_error or _run_reason(outcome, decision)
    stored = journal.end_attempt(
        run,
        exit_code=outcome.exit.exit_code,
        signal=outcome.exit.signal,
        reason=str(outcome.reason),
        leftovers_killed=outcome.leftovers_killed,
        run_status=decision.status,
        run_reason=run_reason,
        restart_delay_s=decision.restart_delay_s,
        output=output,
    )
    if stored is None:
        return None
    restart_delay = decision.restart_delay_s if stored is RunStatus.RESTARTING else None
    return Recorded(stored, run_reason, restart_delay)


def _run_reason(outcome: Outcome, decision: Decision) -> str | None:
    if outcome.reason is AttemptEndReason.STOPPED:
        return f"stopped by {outcome.stop_by}" if outcome.stop_by else "stopped"
    return decision.reason


def release_cgroup(procs: AttemptProcesses, log: BoundLogger) -> None:
    try:
        procs.release()
    except OSError as exc:  # a leftover empty directory is harmless; cleaned at next start
        log.warning("attempt cgroup not removed", error=str(exc))


def release_uid(deps: RunDeps, run: Run, uid: int | None) -> int:
    """RUNVISOR_RUN_UIDS: remove what the attempt's uid left and free it (once); how many of
    its processes were killed (a /proc scan by marker can miss them: counted as leftovers)."""
    if deps.run_uids is None or uid is None:
        return 0
    swept = deps.run_uids.release(run.id, run.attempt)
    return swept.processes if swept is not None else 0


def live_state(
    deps: RunDeps,
    run: Run,
    pid: int | None,
    output_bytes: int,
    status: RunStatus,
    exit_status: ExitStatus | None,
) -> dict[str, Any]:
    """The attempt's live state for Redis, as its RunActor sees it."""
    return {
        "status": str(status),
        "node": deps.journal.node_id,
        "pid": pid,
        "attempt": run.attempt,
        "exit_code": exit_status.exit_code if exit_status else None,
        "signal": exit_status.signal if exit_status else None,
        "output_bytes": output_bytes,
    }
