"""Ending an attempt whose RunActor cannot: it failed, it is wedged, its process was lost, or
its node is gone. Kill what is left of it and store the output its spool still holds; then
the attempt ends as a RunActor's does (actors/attempt_end.py): the restart policy decides, the
end is recorded, the state published, the files removed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runvisor.actors.attempt_end import Outcome, Recorded, end_attempt
from runvisor.actors.deps import RunDeps
from runvisor.actors.output_pump import OutputPump
from runvisor.errors import Fenced, StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.procs.cgroups import AttemptCgroup
from runvisor.procs.proctree import kill_attempt_tree
from runvisor.procs.spawn import ExitStatus, ProcessIdentity, is_alive

log = get_logger("runvisor.supervisor")


@dataclass(frozen=True, slots=True)
class Unended:
    """An attempt the Supervisor must end itself, retried until PostgreSQL records it."""

    attempt: int
    reason: AttemptEndReason
    marker: str | None
    local: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """What became of the attempt: `recorded` False means PostgreSQL is down (try again)."""

    recorded: bool
    restart_delay_s: float | None = None


class AttemptCloser:
    def __init__(self, deps: RunDeps) -> None:
        self.deps = deps

    def close(
        self,
        run_id: int,
        attempt_no: int,
        reason: AttemptEndReason,
        *,
        run: Run | None = None,
        marker: str | None = None,
        local: bool = True,
    ) -> Closed:
        killed = self.kill_cgroup(run_id, attempt_no, self.deps.journal.node_id)
        if marker is not None:
            # First, before any store is asked: the marker alone finds the attempt's processes.
            killed += kill_attempt_tree(leader=None, marker=marker)
        try:
            run = run or self.deps.journal.get_run(run_id)
        except StoreUnavailable:
            return Closed(recorded=False)
        if run is None or run.attempt != attempt_no or run.status is not RunStatus.RUNNING:
            return Closed(recorded=True)  # ended meanwhile, or another attempt runs now
        attempt = run.current_attempt
        if attempt is not None:
            killed += self._kill(
                attempt.pid, attempt.pid_start_ticks, attempt.process_marker, local=local
            )
        output_stored = 0
        if local and attempt is not None:
            # Its processes are gone, so the spool is final: store what is not stored yet
            # before the end is recorded (the spool is removed after that). PostgreSQL down:
            # the Supervisor tries again later, and nothing is deleted meanwhile.
            try:
                output_stored = self._store_spool(run, attempt)
            except StoreUnavailable:
                return Closed(recorded=False)
            except Fenced:
                return Closed(recorded=True)  # ended meanwhile (by its woken RunActor, say)
        outcome = Outcome(
            exit=ExitStatus(exit_code=None, signal=None),
            reason=reason,
            started_at=attempt.started_at.timestamp() if attempt else time.time(),
            leftovers_killed=killed,
            end_mechanism="scan",  # whatever the node has, the closer scans /proc by marker
        )

        def announce(recorded: Recorded) -> None:
            log.warning(
                "attempt ended by the supervisor",
                run_id=run_id,
                attempt=attempt_no,
                reason=str(reason),
                status=str(recorded.status),
                killed=killed,
                output_stored=output_stored,
            )

        def live_state(status: RunStatus) -> dict[str, Any]:
            return {"status": str(status), "node": self.deps.journal.node_id, "attempt": attempt_no}

        try:
            # Its cgroup is gone already (kill_cgroup): nothing for the end to release.
            recorded = end_attempt(
                self.deps.journal,
                self.deps.live,
                self.deps.spool,
                run,
                outcome,
                procs=None,
                live_state=live_state,
                log=log,
                on_recorded=announce,
            )
        except StoreUnavailable:
            return Closed(recorded=False)
        if recorded is None:
            return Closed(recorded=True)  # another node has it now
        return Closed(recorded=True, restart_delay_s=recorded.restart_delay_s)

    def kill_cgroup(self, run_id: int, attempt_no: int, node: str | None) -> int:
        """Kill and remove the attempt's cgroup, if `node` made one on this machine (the other
        node's, after a takeover, when both run here)."""
        tree = self.deps.cgroups
        if tree is None or node is None:
            return 0
        name = tree.attempt(run_id, attempt_no).path.name
        cgroup = AttemptCgroup(
            tree.root.parent / f"runvisor-{node}" / name, tree.mount, tree.controllers
        )
        if not cgroup.exists():
            return 0
        try:
            killed = cgroup.kill()
            cgroup.remove()
        except OSError as exc:
            log.warning("attempt cgroup not removed", cgroup=str(cgroup.path), error=str(exc))
            return 0
        return killed

    def _store_spool(self, run: Run, attempt: Attempt) -> int:
        """Store the attempt's spool bytes past the stored end, fenced by node and attempt as
        its RunActor's writes are; the bytes stored. Raises StoreUnavailable or Fenced."""
        pump = OutputPump(
            run_id=run.id,
            attempt=attempt.attempt,
            spool_path=self.deps.spool.output(run.id, attempt.attempt),
            base_offset=attempt.output_offset,
            stored_in_spool=max(run.output_bytes - attempt.output_offset, 0),
            max_output_bytes=run.max_output_bytes,
            journal=self.deps.journal,
            live=self.deps.live,
        )
        before = pump.stored_bytes
        try:
            pump.flush(to_eof=True)
        except OSError as exc:
            # Unreadable (a file where its directory should be, say): nothing of it can be
            # stored, and retrying would not change that.
            log.warning(
                "spool not readable; its output is not stored", run_id=run.id, error=str(exc)
            )
        finally:
            pump.close()
        return pump.stored_bytes - before

    def _kill(self, pid: int | None, start_ticks: int | None, marker: str, *, local: bool) -> int:
        if local and pid is not None:
            # Its RunActor is gone or wedged: let the reaper collect the wrapper's exit.
            identity = ProcessIdentity(pid, start_ticks or 0)
            leader = identity if is_alive(identity) else None  # a dead pid's number may be reused
            self.deps.watcher.unwatch(pid)
            return kill_attempt_tree(leader=leader, marker=marker)
        # Another node's attempt: its pid means nothing here, its unique marker does (the
        # nodes may share a machine).
        return kill_attempt_tree(leader=None, marker=marker)
