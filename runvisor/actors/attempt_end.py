"""The end of an attempt, as its RunActor records it: the restart policy decides what becomes
of the run, PostgreSQL records the attempt's end and the run's status (fenced by node and
attempt), and the attempt's files are removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from structlog.stdlib import BoundLogger

from runvisor.actors.deps import RunDeps
from runvisor.models import AttemptEndReason, Run, RunStatus
from runvisor.policy import Decision, attempt_history, decide
from runvisor.procs.attempt_processes import AttemptProcesses
from runvisor.procs.spawn import ExitStatus
from runvisor.store.journal import RunJournal


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as its RunActor saw it."""

    exit: ExitStatus
    reason: AttemptEndReason
    started_at: float  # time.time() when the attempt started
    leftovers_killed: int
    stop_by: str | None = None  # who stopped it (reason STOPPED)
    spawn_error: str | None = None  # why its process could not start


@dataclass(frozen=True, slots=True)
class Recorded:
    """The run as PostgreSQL took the end of its attempt."""

    status: RunStatus  # terminal, or RESTARTING
    reason: str | None  # the run's reason
    restart_delay_s: float | None  # set when RESTARTING


def record_end(journal: RunJournal, run: Run, outcome: Outcome) -> Recorded | None:
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


def remove_files(spool_dir: Path, work_dir: Path, attempt: int, *, run_ended: bool) -> None:
    """Once the run has ended, its spool and working directories; else the attempt's spool
    files (the next attempt writes its own, in the same working directory)."""
    if run_ended:
        shutil.rmtree(spool_dir, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    for suffix in (".out", ".status", ".uid"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool_dir / f"{attempt}{suffix}")


def publish_state(
    deps: RunDeps,
    run: Run,
    pid: int | None,
    output_bytes: int,
    status: RunStatus,
    exit_status: ExitStatus | None,
) -> None:
    """The attempt's live state in Redis (best effort), as a RunActor sees it."""
    deps.live.publish_state(
        run.id,
        {
            "status": str(status),
            "node": deps.journal.node_id,
            "pid": pid,
            "attempt": run.attempt,
            "exit_code": exit_status.exit_code if exit_status else None,
            "signal": exit_status.signal if exit_status else None,
            "output_bytes": output_bytes,
        },
        terminal=status.is_terminal,
    )
