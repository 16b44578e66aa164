"""What passes between nodes, as the Supervisor does it: the takeover of dead nodes' runs, the
runs another node took over while this one was away (its lease lapsed), and drains.

A part of the Supervisor (`FleetDuties` is one of its bases), kept apart by role: it runs in
the Supervisor's thread and works on its table of RunActors and restarts.
"""

from __future__ import annotations

import contextlib

import pykka

from runvisor import protocol as m
from runvisor.actors.deps import RunDeps
from runvisor.actors.timer import TimerHandle
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import AttemptEndReason, Run, RunStatus
from runvisor.supervisor.closer import AttemptCloser, Unended
from runvisor.supervisor.drain import Drain
from runvisor.supervisor.lease import NodeLease
from runvisor.supervisor.takeover import take_over_dead_nodes
from runvisor.supervisor.watchdog import LiveAttempt

log = get_logger("runvisor.supervisor")
RETRY_S = 1.0


class FleetDuties:
    # The Supervisor's, which it sets in __init__.
    deps: RunDeps
    live: dict[int, LiveAttempt]
    restarts: dict[int, TimerHandle]
    closer: AttemptCloser
    lease: NodeLease
    draining: Drain | None

    def drain(self, deadline_s: float | None) -> int:
        raise NotImplementedError  # the Supervisor's

    def _close(self, run_id: int, unended: Unended, run: Run | None = None) -> bool:
        raise NotImplementedError  # the Supervisor's

    def _forget(self, run_id: int, attempt: int) -> LiveAttempt | None:
        raise NotImplementedError  # the Supervisor's

    def _schedule_restart(self, run_id: int, delay_s: float) -> None:
        raise NotImplementedError  # the Supervisor's

    # Takeover, and being taken over

    def _take_over_dead_nodes(self) -> None:
        """Runs of a node whose lease expired are lost there: end their attempts, restart here
        (a draining node takes none: another node will)."""
        if self.draining is not None:
            return
        taken = take_over_dead_nodes(
            journal=self.deps.journal, live=self.deps.live, lease=self.lease
        )
        for node, run in taken:
            if run.status is RunStatus.RESTARTING:
                self._schedule_restart(run.id, 0.0)
            else:
                # When the dead node ran on this machine too, its cgroup of the attempt holds
                # every process, even those the marker no longer finds.
                self.closer.kill_cgroup(run.id, run.attempt, node)
                attempt = run.current_attempt
                marker = attempt.process_marker if attempt else None
                self._close(run.id, Unended(run.attempt, AttemptEndReason.LOST, marker, False), run)

    def _stand_down_superseded(self) -> None:
        """This node's lease had lapsed: what another node took over meanwhile must not run on
        here beside the attempt that replaced it. Killed now, not at its next write."""
        attempts = [(run_id, entry.attempt) for run_id, entry in self.live.items()]
        try:
            owned = self.deps.journal.drains.still_owned(attempts)
        except StoreUnavailable:
            return  # its writes are fenced off meanwhile; the next lapse or write settles it
        for run_id, attempt in attempts:
            if (run_id, attempt) not in owned:
                entry = self._forget(run_id, attempt)
                if entry is not None:
                    log.warning("run taken over by another node; killing this copy", run_id=run_id)
                    with contextlib.suppress(pykka.ActorDeadError):
                        entry.ref.tell(m.Superseded())

    # Drains

    def _read_back_drain(self) -> None:
        """A drain recorded in PostgreSQL reaches this node even if its message did not."""
        try:
            order = self.deps.journal.drains.drain_request()
        except StoreUnavailable:
            return
        if order is not None:
            self.drain(order.deadline_s)

    def _drain_tick(self) -> None:
        drain = self.draining
        if drain is None or not drain.past_deadline():
            return
        for run_id, entry in list(self.live.items()):
            if (run_id, entry.attempt) not in drain.evicted:
                drain.evicted.add((run_id, entry.attempt))
                log.info("drain deadline passed: stopping the run", run_id=run_id)
                with contextlib.suppress(pykka.ActorDeadError):
                    entry.ref.tell(m.Evict(grace_s=self.deps.settings.default_grace_s))
        for run_id in list(self.restarts):
            self.restarts.pop(run_id).cancel()
            self._release(run_id)

    def _release(self, run_id: int) -> None:
        """Hand a run due to restart to the queue: another node restarts it."""
        try:
            released = self.deps.journal.drains.release_restarting(run_id)
        except StoreUnavailable:
            self._schedule_restart(run_id, RETRY_S)
            return
        log.info("draining: run handed to the queue", run_id=run_id, released=released)
