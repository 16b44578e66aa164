"""The start of an attempt, for its RunActor: how its processes are tracked (the attempt's
cgroup or /proc scans, its limits), the run's working directory, its process (spawned under
the wrapper, or taken over after a restart of the service), watched for its exit, and the pump
of its output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pykka
from structlog.stdlib import BoundLogger

from runvisor import protocol as m
from runvisor.actors.deps import RunDeps
from runvisor.actors.output_pump import OutputPump
from runvisor.actors.tell import tell_quietly
from runvisor.errors import StoreUnavailable
from runvisor.models import Attempt, OnOutputLimit, Run
from runvisor.procs.attempt_processes import AttemptProcesses
from runvisor.procs.limits import effective_limits
from runvisor.procs.run_env import run_environment
from runvisor.procs.run_user import RunUser
from runvisor.procs.spawn import spawn_attempt
from runvisor.store.journal import RunJournal


def attempt_processes(
    run: Run, deps: RunDeps, *, status_path: Path, adopt: Attempt | None
) -> AttemptProcesses:
    # The attempt's row (and its marker) was written when the run was claimed.
    attempt = run.current_attempt
    assert attempt is not None
    cgroup = deps.cgroups.attempt(run.id, run.attempt) if deps.cgroups else None
    if adopt is not None and cgroup is not None and not cgroup.exists():
        cgroup = None  # started before this node had cgroups: found by /proc scans
    return AttemptProcesses(
        marker=attempt.process_marker,
        status_path=status_path,
        adopted=adopt is not None,
        cgroup=cgroup,
        limits=effective_limits(deps.settings.run_limits, run.limits),
    )


def run_user_of(deps: RunDeps, uid: int | None) -> RunUser | None:
    """Who the attempt runs as: the node's run user, or with RUNVISOR_RUN_UIDS its own uid
    (None there: an adopted attempt started without one; never a new spawn)."""
    if deps.run_uids is None:
        return deps.run_user
    return deps.run_uids.user(uid) if uid is not None else None


def make_dirs(run: Run, deps: RunDeps, uid: int | None, adopt: Attempt | None) -> None:
    """The run's spool directory (the service's alone) and working directory: the run user's
    own (0700), in the service's work dir.

    With one uid per attempt, for a new spawn, what earlier attempts of the run left there
    belongs to their uids: it is handed over to this attempt's."""
    deps.spool.run_spool(run.id).mkdir(mode=0o700, parents=True, exist_ok=True)
    work_dir = deps.spool.run_work(run.id)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_user = run_user_of(deps, uid)
    if run_user is None or not run_user.switches:
        return
    if deps.run_uids is not None and adopt is None:
        deps.run_uids.hand_over_work_dir(work_dir, run_user.uid)
    else:
        os.chown(work_dir, run_user.uid, run_user.gid)


def spawn(
    run: Run,
    deps: RunDeps,
    procs: AttemptProcesses,
    owner: pykka.ActorRef[Any],
    *,
    uid: int | None = None,
) -> OutputPump:
    """Spawn the attempt's process in its cgroup, with its limits and a clean environment;
    `owner` is told ProcessExited when it exits. Raises OSError or ValueError if it cannot
    start."""
    spool_path = deps.spool.output(run.id, run.attempt)
    work_dir = deps.spool.run_work(run.id)
    run_user = run_user_of(deps, uid)
    env = run_environment(
        run_id=run.id,
        attempt=run.attempt,
        node_id=deps.journal.node_id,
        marker=procs.marker,
        requested=run.env,
        run_user=run_user,
        work_dir=work_dir,
    )
    if deps.run_uids is not None:
        if uid is None:  # never as root, nor as a uid another attempt holds
            raise RuntimeError("no uid of RUNVISOR_RUN_UIDS was handed to this attempt")
        deps.run_uids.record(run.id, run.attempt)  # before the spawn: adoption holds it again
    procs.create_cgroup()
    # Processes are created one at a time on a node (the exit watcher's lock). An actor queued
    # behind hundreds of others (a burst of starts) is waiting, not wedged: marked like a store
    # call, the watchdog does not take it for stuck and kill its run before it began.
    with deps.store_waits.call():
        procs.identity = deps.watcher.spawn_watched(
            lambda guard: spawn_attempt(
                code=run.code,
                env=env,
                spool_path=spool_path,
                status_path=procs.status_path,
                cwd=work_dir,
                run_user=run_user,
                prepare=procs.prepare,
                spawn_guard=guard,
            ),
            lambda: tell_quietly(owner, m.ProcessExited()),
        )
    # Live output goes on from what is stored: bytes a node taken over published and never
    # stored are not the ones this attempt writes at those offsets.
    deps.live.restart_tail(run.id, run.output_bytes)
    return _pump(run, deps, owner, spool_path, base_offset=run.output_bytes, stored_in_spool=0)


def adopt(
    run: Run,
    deps: RunDeps,
    procs: AttemptProcesses,
    owner: pykka.ActorRef[Any],
    attempt: Attempt,
) -> tuple[OutputPump, bool]:
    """Take over the recorded process of `attempt`, and the pump of its output from the last
    stored byte. True if it still runs and is watched now; False: it has exited already, and
    its exit is to be handled at once."""
    spool_path = deps.spool.output(run.id, attempt.attempt)
    assert attempt.pid is not None
    alive = procs.adopt(attempt.pid, attempt.pid_start_ticks, attempt.boot_id)
    pump = _pump(
        run,
        deps,
        owner,
        spool_path,
        base_offset=attempt.output_offset,
        stored_in_spool=max(run.output_bytes - attempt.output_offset, 0),
    )
    watched = alive and deps.watcher.watch(
        attempt.pid, lambda: tell_quietly(owner, m.ProcessExited())
    )
    return pump, watched


def record_process(
    journal: RunJournal, run: Run, procs: AttemptProcesses, log: BoundLogger
) -> bool:
    """Record the spawned process's identity (pid + start time); False while PostgreSQL
    cannot (the RunActor tries again at its next flush)."""
    identity = procs.identity
    assert identity is not None
    try:
        journal.start_attempt(run, pid=identity.pid, start_ticks=identity.start_ticks)
    except StoreUnavailable as exc:
        log.warning("attempt not recorded yet; will retry", error=exc.message)
        return False
    return True


def _pump(
    run: Run,
    deps: RunDeps,
    owner: pykka.ActorRef[Any],
    spool_path: Path,
    *,
    base_offset: int,
    stored_in_spool: int,
) -> OutputPump:
    """The attempt's output pump, handed to the OutputFlusher, which stores its output for
    `owner` (and tells it when it passes a limit that stops it)."""
    pump = OutputPump(
        run_id=run.id,
        attempt=run.attempt,
        spool_path=spool_path,
        base_offset=base_offset,
        stored_in_spool=stored_in_spool,
        max_output_bytes=run.max_output_bytes,
        journal=deps.journal,
        live=deps.live,
    )
    deps.flusher.watch(owner, pump, stops_at_limit=run.on_output_limit == OnOutputLimit.STOP)
    return pump
