"""The root Supervisor actor: spawns one RunActor per attempt, queues, restarts, adopts.

It owns the table of live RunActors of this node. Decisions about a finished attempt are made
by the RunActor with the restart policy; the Supervisor schedules the restarts, fills free
slots from the queue in PostgreSQL, pings RunActors to catch a wedged one, re-delivers stop
requests recorded in PostgreSQL, takes over the runs of nodes whose lease expired, drains, and
at start-up adopts the runs this node owned before it stopped or crashed. The adoption
(recovery.py), the pings (watchdog.py), ending an attempt without its RunActor (closer.py), the
lease (lease.py), and what passes between nodes (fleet.py: takeover, drains) are in modules of
their own; this one keeps the table of RunActors and acts on what they say.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import pykka

from runvisor import metrics
from runvisor import protocol as m
from runvisor.actors.deps import RunDeps
from runvisor.actors.run_actor import RunActor
from runvisor.actors.timer import TimerHandle
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.procs.spawn import boot_id
from runvisor.supervisor.closer import AttemptCloser, Unended
from runvisor.supervisor.drain import Drain
from runvisor.supervisor.fleet import FleetDuties
from runvisor.supervisor.lease import NodeLease
from runvisor.supervisor.recovery import (
    Adopt,
    NeverRecorded,
    RestartLater,
    clear_leftover_cgroups,
    clear_leftover_spools,
    plan_recovery,
)
from runvisor.supervisor.slots import free_slots
from runvisor.supervisor.watchdog import LiveAttempt, Verdict, Watchdog

TICK_S = 1.0  # also how often to look for expired leases: failover within the TTL + ~1 s
SLOW_CHECK_S = 5.0  # how often to re-deliver stop and drain requests recorded in PostgreSQL

log = get_logger("runvisor.supervisor")


class Supervisor(pykka.ThreadingActor, FleetDuties, m.SupervisorCalls):
    def __init__(self, *, deps: RunDeps, run_actor_class: type[RunActor] = RunActor) -> None:
        super().__init__()
        self.deps = deps
        # Each attempt's actor: RunActor in the service; tests pass subclasses that misbehave.
        self.run_actor_class = run_actor_class
        self.node_id = deps.journal.node_id
        self.closer = AttemptCloser(deps)
        self.watchdog = Watchdog(
            journal=deps.journal,
            store_waits=deps.store_waits,
            ping_timeout_s=deps.settings.ping_timeout_s,
        )
        self.live: dict[int, LiveAttempt] = {}  # run id -> its RunActor
        self.restarts: dict[int, TimerHandle] = {}
        self.unended: dict[int, Unended] = {}
        self.recovered = self.stopping = False
        self.fill_requested = False  # a FillSlots is on its way to this actor
        # The last fill ran out of slots, not of queued runs: fill a freed slot at once (else
        # an ended run costs no claim; new runs come with RunsQueued, or the tick finds them).
        self.runs_may_wait = True
        self.tick: TimerHandle | None = None
        self.next_slow_check = 0.0
        self.lease = NodeLease(
            deps.live,
            node_id=self.node_id,
            ttl_s=deps.settings.lease_ttl_s,
            on_lapse=lambda: self.actor_ref.tell(m.LeaseLapsed()),
        )
        self.draining: Drain | None = None  # while the node drains

    # Lifecycle

    def on_start(self) -> None:
        metrics.count_running(lambda: len(self.live))  # read by each scrape, from its thread
        self.lease.start()
        self._recover()
        self.tick = self.deps.timers.schedule(TICK_S, self.actor_ref, m.SupervisorTick())

    def on_stop(self) -> None:
        if self.tick is not None:
            self.tick.cancel()
        for handle in self.restarts.values():
            handle.cancel()
        # The lease is left to expire rather than dropped: a node restarted within the lease
        # time (or its detach time, service.py) adopts its own runs; only a node that stays
        # away has them taken over.
        self.lease.stop()

    # Asked through its proxy (m.SupervisorProxy: from HTTP, the control listener, the service)

    def start_run(self, run_id: int) -> bool:
        """Start queued runs, oldest first, while slots are free. True if `run_id` runs now.
        (The HTTP side does not wait for this: it tells RunsQueued.)"""
        self._fill_slots(raise_errors=True)
        return run_id in self.live

    def stop_run(self, run_id: int, grace_s: float, requested_by: str) -> bool:
        """Stop a run this node owns. False if it is not (or no longer) here."""
        entry = self.live.get(run_id)
        if entry is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                entry.ref.tell(m.StopRun(grace_s=grace_s, requested_by=requested_by))
                return True
        handle = self.restarts.pop(run_id, None)
        if handle is not None:
            handle.cancel()
        try:
            return self.deps.journal.stop_restarting_run(run_id)
        except StoreUnavailable:
            return False

    def running_count(self) -> int:
        return len(self.live)

    def drain(self, deadline_s: float | None) -> int:
        """Claim nothing more; stop what still runs after `deadline_s` (None: never)."""
        if self.draining is None:
            log.info("draining", deadline_s=deadline_s, running=len(self.live))
            self.draining = Drain.within(deadline_s)
        else:
            self.draining.update(deadline_s)
        self._drain_tick()
        return self.active_count()

    def active_count(self) -> int:
        return len(self.live) + len(self.restarts) + len(self.unended)

    def detach_all(self, timeout_s: float = 10.0) -> int:
        """Shutdown: every RunActor stores its output and stops; the processes go on."""
        self.stopping = True
        refs = [entry.ref for entry in self.live.values()]
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(m.Detach())
        deadline = time.monotonic() + timeout_s
        for ref in refs:
            while ref.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.live.clear()
        return len(refs)

    # Messages from RunActors and timers

    def on_receive(self, message: Any) -> Any:
        # The Supervisor must outlive any single failure: an exception here would stop it, and
        # with it every restart, the queue and the pings. Log it and go on.
        try:
            self._handle(message)
        except Exception:
            log.exception("supervisor could not handle a message", message=repr(message))
        return None

    def _handle(self, message: Any) -> None:
        if self.stopping:
            return  # shutting down: start nothing more
        match message:
            case m.AttemptEnded(run_id=run_id, attempt=attempt, restart_delay_s=delay):
                if self._forget(run_id, attempt) is None:
                    return  # a RunActor that was given up on (wedged) ended late
                if delay is not None:
                    self._schedule_restart(run_id, delay)
                if self.runs_may_wait:
                    self._fill_slots()
            case m.RunActorFailed(run_id=run_id, attempt=attempt):
                entry = self._forget(run_id, attempt)
                if entry is not None:
                    self._close(
                        run_id,
                        Unended(attempt, AttemptEndReason.ACTOR_FAILED, entry.marker, local=True),
                    )
                self._fill_slots()
            case m.RestartDue(run_id=run_id):
                self.restarts.pop(run_id, None)
                self._restart(run_id)
            case m.SupervisorTick():
                self._on_tick()
            case m.RunsQueued():
                self._request_fill()
            case m.FillSlots():
                if self.fill_requested:
                    self._fill_slots()
            case m.LeaseLapsed():
                self._stand_down_superseded()

    def _on_tick(self) -> None:
        try:
            if not self.recovered:
                self._recover()
            for run_id, unended in list(self.unended.items()):
                self._close(run_id, unended)
            if self.deps.run_uids is not None:
                self.deps.run_uids.resweep()
            self._ping_run_actors()
            if time.monotonic() >= self.next_slow_check:
                self.next_slow_check = time.monotonic() + SLOW_CHECK_S
                self._redeliver_stops()
                self._read_back_drain()
                if self.lease.may_have_lapsed():
                    self._stand_down_superseded()  # cut off from Redis: PostgreSQL can tell
            self._take_over_dead_nodes()
            if self.draining is not None:
                self._drain_tick()
            self._fill_slots()
        finally:
            self.tick = self.deps.timers.schedule(TICK_S, self.actor_ref, m.SupervisorTick())

    # The table of RunActors

    def _spawn(self, run: Run, adopt: Attempt | None = None) -> None:
        uid = None
        if self.deps.run_uids is not None:
            # Taken here, in the Supervisor's thread, where the free slots were counted; an
            # adopted attempt's uid was held again by _recover_run.
            uids = self.deps.run_uids
            held = adopt is not None
            uid = uids.uid_of(run.id, run.attempt) if held else uids.take(run.id, run.attempt)
        ref = self.run_actor_class.start(
            run=run, deps=self.deps, supervisor=self.actor_ref, adopt=adopt, uid=uid
        )
        attempt = run.current_attempt
        assert attempt is not None  # a claim writes the attempt's row and returns it with the run
        self.live[run.id] = LiveAttempt(ref=ref, attempt=run.attempt, marker=attempt.process_marker)

    def _forget(self, run_id: int, attempt: int) -> LiveAttempt | None:
        """Drop the RunActor of `attempt`; None if the table holds another attempt (or none)."""
        entry = self.live.get(run_id)
        if entry is None or entry.attempt != attempt:
            return None
        del self.live[run_id]
        return entry

    def _close(self, run_id: int, unended: Unended, run: Run | None = None) -> bool:
        """End an attempt without its RunActor; kept in `unended` until it is recorded."""
        self.unended[run_id] = unended
        closed = self.closer.close(
            run_id,
            unended.attempt,
            unended.reason,
            run=run,
            marker=unended.marker,
            local=unended.local,
        )
        if not closed.recorded:
            return False
        del self.unended[run_id]
        if self.deps.run_uids is not None:
            # Its processes were killed by the closer: now what else its uid left, if it held one.
            self.deps.run_uids.release(run_id, unended.attempt)
        if closed.restart_delay_s is not None:
            self._schedule_restart(run_id, closed.restart_delay_s)
        return True

    # Slots, the queue and restarts

    def _free_slots(self) -> int:
        uids = self.deps.run_uids
        return free_slots(
            max_running=self.deps.settings.max_running,
            running=len(self.live),
            free_uids=None if uids is None else uids.available(),
        )

    def _fill_slots(self, *, raise_errors: bool = False) -> None:
        """Claim queued runs, oldest first, a batch per claim, while slots are free."""
        self.fill_requested = False
        if self.draining is not None:
            return  # a draining node claims nothing more
        try:
            while free := self._free_slots():
                runs = self.deps.journal.claim_queued(limit=free, boot_id=boot_id())
                for run in runs:
                    metrics.run_started()
                    self._spawn(run)
                if len(runs) < free:
                    self.runs_may_wait = False
                    return  # the queue is empty (or the rest is being claimed elsewhere)
            self.runs_may_wait = True  # no slot left
        except StoreUnavailable:
            self.runs_may_wait = True
            if raise_errors:
                raise  # else the next tick tries again

    def _request_fill(self) -> None:
        """Fill the free slots once the messages already waiting are handled: a burst of
        RunsQueued costs one claim, not one each."""
        if not self.fill_requested:
            self.fill_requested = True
            self.actor_ref.tell(m.FillSlots())

    def _schedule_restart(self, run_id: int, delay_s: float) -> None:
        log.info("restart scheduled", run_id=run_id, delay_s=round(delay_s, 3))
        self.restarts[run_id] = self.deps.timers.schedule(
            delay_s, self.actor_ref, m.RestartDue(run_id)
        )

    def _restart(self, run_id: int) -> None:
        if self.draining is not None:
            self._release(run_id)
            return
        if not self._free_slots() > 0:
            self._schedule_restart(run_id, TICK_S)  # RUNVISOR_MAX_RUNNING counts restarts too
            return
        try:
            run = self.deps.journal.claim_run(run_id, marker=uuid.uuid4().hex, boot_id=boot_id())
            if run is None and not self.deps.journal.stop_restarting_run(run_id):
                current = self.deps.journal.get_run(run_id)
                if (
                    current
                    and current.status is RunStatus.RESTARTING
                    and (current.node == self.node_id)
                ):
                    self._schedule_restart(run_id, TICK_S)  # locked a moment: try again
                return
        except StoreUnavailable:
            self._schedule_restart(run_id, TICK_S)
            return
        if run is not None:
            log.info("restarting", run_id=run_id, attempt=run.attempt)
            self._spawn(run)

    # Recovery, stops, pings, leases

    def _recover(self) -> None:
        """Adopt the runs this node owned before; restart or end the ones that are gone."""
        try:
            runs = self.deps.journal.active_runs_of_node()
            keep = {run.id for run in runs}
            clear_leftover_spools(self.deps.journal, self.deps.spool, keep)
            clear_leftover_cgroups(self.deps.cgroups, self.closer, self.node_id, runs)
            for run in runs:
                self._recover_run(run)
        except StoreUnavailable as exc:
            log.warning("recovery waits for PostgreSQL", error=exc.message)
            return
        if self.deps.run_uids is not None:
            # Adopted attempts hold their uids again: clean up after every other uid of the
            # range, then hand uids out.
            self.deps.run_uids.sweep_unheld()
            self.deps.run_uids.open()
        self.recovered = True

    def _recover_run(self, run: Run) -> None:
        if run.id in self.live or run.id in self.restarts or run.id in self.unended:
            return
        if self.deps.run_uids is not None and run.status is RunStatus.RUNNING:
            # Before anything new starts: its uid is not free while its processes may run.
            self.deps.run_uids.hold_recorded(run.id, run.attempt)
        match plan_recovery(run, time.time()):
            case RestartLater(delay_s=delay_s):
                self._schedule_restart(run.id, delay_s)
            case NeverRecorded(marker=marker):
                log.warning("run lost: its process was never recorded", run_id=run.id)
                self._close(run.id, Unended(run.attempt, AttemptEndReason.LOST, marker, True), run)
            case Adopt(attempt=attempt):
                log.info("adopting run", run_id=run.id, pid=attempt.pid, attempt=attempt.attempt)
                self.deps.journal.audit("run.adopt", run_id=run.id, detail={"pid": attempt.pid})
                self._spawn(run, adopt=attempt)

    def _redeliver_stops(self) -> None:
        """Stops recorded in PostgreSQL reach their run even if the message did not (a lossy
        Redis channel, a stop sent while this node was down or the run was between attempts)."""
        try:
            requests = self.deps.journal.stop_requests()
        except StoreUnavailable:
            return
        for run_id, by, grace_s, age_s in requests:
            grace = self.deps.settings.default_grace_s if grace_s is None else grace_s
            self.stop_run(run_id, max(grace - age_s, 0.0), by)

    def _ping_run_actors(self) -> None:
        for finding in self.watchdog.check(self.live):
            run_id, entry = finding.run_id, finding.entry
            match finding.verdict:
                case Verdict.WEDGED:
                    # Forgotten only once its end is recorded: until then stops still go to
                    # it, and a PostgreSQL outage (which slows every RunActor) cannot orphan
                    # the run.
                    unended = Unended(entry.attempt, AttemptEndReason.STUCK, entry.marker, True)
                    if self._close(run_id, unended):
                        self._forget(run_id, entry.attempt)
                case Verdict.FAILED:
                    self._forget(run_id, entry.attempt)
                    unended = Unended(
                        entry.attempt, AttemptEndReason.ACTOR_FAILED, entry.marker, True
                    )
                    self._close(run_id, unended, finding.run)
                case Verdict.GONE:
                    self._forget(run_id, entry.attempt)
