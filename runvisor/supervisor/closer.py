"""Ending an attempt whose RunActor cannot: it failed, it is wedged, its process was lost, or
its node is gone. Kill what is left of it, store the output its spool still holds, decide by
the restart policy, record the end."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from runvisor.actors.deps import RunDeps
from runvisor.actors.output_pump import OutputPump
from runvisor.errors import Fenced, StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.policy import attempt_history, decide
from runvisor.procs.cgroups import AttemptCgroup
from runvisor.procs.proctree import kill_attempt_tree
from runvisor.procs.spawn import ProcessIdentity, is_alive

log = get_logger("runvisor.supervisor")


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
        attempt = next((a for a in run.attempts if a.attempt == attempt_no), None)
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
        started = attempt.started_at.timestamp() if attempt else time.time()
        history = attempt_history(run, started_at=started, ended_at=time.time(), succeeded=False)
        decision = decide(
            run.restart_policy, reason=reason, succeeded=False, attempts=history, now=time.time()
        )
        try:
            stored = self.deps.journal.end_attempt(
                run,
                exit_code=None,
                signal=None,
                reason=str(reason),
                leftovers_killed=killed,
                run_status=decision.status,
                run_reason=decision.reason,
                restart_delay_s=decision.restart_delay_s,
            )
        except StoreUnavailable:
            return Closed(recorded=False)
        if stored is None:
            return Closed(recorded=True)  # another node has it now
        log.warning(
            "attempt ended by the supervisor",
            run_id=run_id,
            attempt=attempt_no,
            reason=str(reason),
            status=str(stored),
            killed=killed,
            output_stored=output_stored,
        )
        self.deps.live.publish_state(
            run_id,
            {"status": str(stored), "node": self.deps.journal.node_id, "attempt": attempt_no},
            terminal=stored.is_terminal,
        )
        if stored.is_terminal:
            shutil.rmtree(self.deps.settings.spool_dir / str(run_id), ignore_errors=True)
            shutil.rmtree(self.deps.settings.work_dir / str(run_id), ignore_errors=True)
        restarting = stored is RunStatus.RESTARTING
        return Closed(
            recorded=True, restart_delay_s=decision.restart_delay_s if restarting else None
        )

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
            spool_path=self.deps.settings.spool_dir / str(run.id) / f"{attempt.attempt}.out",
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
