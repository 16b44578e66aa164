"""Recovery at start-up: what became of the runs this node owned before it stopped or crashed,
and what runs it no longer owns left on this machine (spool directories, cgroups).

The Supervisor calls these, and retries at every tick until PostgreSQL has answered; it owns
the table of RunActors, so it carries out the plan for each run itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.logs import get_logger
from runvisor.models import Attempt, Run, RunStatus
from runvisor.procs.cgroups import CgroupTree
from runvisor.procs.proctree import kill_attempt_tree
from runvisor.procs.spool import SpoolLayout
from runvisor.store.journal import RunJournal
from runvisor.supervisor.closer import AttemptCloser

log = get_logger("runvisor.supervisor")


@dataclass(frozen=True, slots=True)
class RestartLater:
    """A restarting run: its next attempt is due in `delay_s` (0: overdue)."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Adopt:
    """A running attempt whose process was recorded: a RunActor takes it over."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class NeverRecorded:
    """Claimed, but the node went down before the process was recorded: kill what carries
    the attempt's marker, end the attempt as lost, and let the policy decide."""

    marker: str | None


RecoveryPlan = RestartLater | Adopt | NeverRecorded


def plan_recovery(run: Run, now: float) -> RecoveryPlan:
    """What to do with an active run of this node found at start-up (`now`: time.time())."""
    if run.status is RunStatus.RESTARTING:
        due = run.next_attempt_at.timestamp() - now if run.next_attempt_at else 0
        return RestartLater(max(due, 0.0))
    attempt = run.current_attempt
    if attempt is None or attempt.pid is None:
        return NeverRecorded(attempt.process_marker if attempt else None)
    return Adopt(attempt)


def clear_leftover_spools(journal: RunJournal, spool: SpoolLayout, keep: set[int]) -> None:
    """Spool directories of runs this node no longer owns (they ended, or another node took
    them over while this one was away): kill what of them still runs here, remove them."""
    stale = [run_id for run_id in spool.spooled_runs() if run_id not in keep]
    if not stale:
        return
    markers = journal.attempt_markers(stale)
    for run_id in stale:
        killed = sum(kill_attempt_tree(leader=None, marker=mk) for mk in markers.get(run_id, []))
        if killed:
            log.warning(
                "killed processes of a run this node no longer owns",
                run_id=run_id,
                processes=killed,
            )
            journal.audit("run.orphans_killed", run_id=run_id, detail={"processes": killed})
        spool.remove_run(run_id)


def clear_leftover_cgroups(
    cgroups: CgroupTree | None, closer: AttemptCloser, node_id: str, runs: list[Run]
) -> None:
    """Cgroups of attempts this node no longer runs (ended while it was away, or an older
    attempt of a run): kill what is in them and remove them."""
    if cgroups is None:
        return
    current = {(run.id, run.attempt) for run in runs if run.status is RunStatus.RUNNING}
    for run_id, attempt_no, cgroup in list(cgroups.existing()):
        if (run_id, attempt_no) in current:
            continue
        killed = closer.kill_cgroup(run_id, attempt_no, node_id)
        if killed:
            log.warning(
                "killed processes of an attempt this node no longer runs",
                run_id=run_id,
                attempt=attempt_no,
                processes=killed,
                cgroup=str(cgroup.path),
            )
