"""The root Supervisor actor: spawns one RunActor per attempt, queues, restarts, adopts.

It owns the table of live RunActors of this node. Decisions about a finished attempt are made
by the RunActor with the restart policy; the Supervisor schedules the restarts, fills free
slots from the queue in PostgreSQL, pings RunActors to catch a wedged one, re-delivers stop
requests recorded in PostgreSQL, takes over the runs of nodes whose lease expired, and at
start-up adopts the runs this node owned before it stopped or crashed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pykka

from runvisor.actors import messages as m
from runvisor.actors.cgroups import AttemptCgroup
from runvisor.actors.proctree import kill_attempt_tree
from runvisor.actors.run_actor import RunActor, RunDeps
from runvisor.actors.spawn import boot_id
from runvisor.actors.timer import TimerHandle
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.supervisor.closer import AttemptCloser

TICK_S = 1.0
SLOW_CHECK_S = 5.0  # how often to re-deliver stop requests and look for expired leases

log = get_logger("runvisor.supervisor")


@dataclass(slots=True)
class LiveAttempt:
    """A RunActor of this node and what the Supervisor knows of its attempt."""

    ref: pykka.ActorRef[RunActor]
    attempt: int
    marker: str
    ping: tuple[float, pykka.Future[Any]] | None = None
    dead_since: float | None = None
    logged_store_wait: float | None = None  # the store wait already logged (its start)


@dataclass(frozen=True, slots=True)
class Unended:
    """An attempt the Supervisor must end itself, retried until PostgreSQL records it."""

    attempt: int
    reason: AttemptEndReason
    marker: str | None
    local: bool


class Supervisor(pykka.ThreadingActor):
    def __init__(self, *, deps: RunDeps) -> None:
        super().__init__()
        self.deps = deps
        self.node_id = deps.journal.node_id
        self.closer = AttemptCloser(deps)
        self.live: dict[int, LiveAttempt] = {}  # run id -> its RunActor
        self.restarts: dict[int, TimerHandle] = {}
        self.unended: dict[int, Unended] = {}
        self.recovered = False
        self.stopping = False
        self.tick: TimerHandle | None = None
        self.next_slow_check = 0.0
        # Since when Redis has answered our lease renewals without a break (None: it failed).
        self.redis_ok_since: float | None = None

    # Lifecycle

    def on_start(self) -> None:
        self._renew_lease()
        self._recover()
        self.tick = self.deps.timers.schedule(TICK_S, self.actor_ref, m.SupervisorTick())

    def on_stop(self) -> None:
        if self.tick is not None:
            self.tick.cancel()
        for handle in self.restarts.values():
            handle.cancel()
        # The lease is left to expire rather than dropped: a node restarted within the lease
        # time adopts its own runs; only a node that stays away has them taken over.

    # Called through the proxy (from HTTP and the control listener)

    def start_run(self, run_id: int) -> bool:
        """Start queued runs, oldest first, while slots are free. True if `run_id` runs now."""
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
            case m.AttemptEnded(run_id=run_id, attempt=attempt, restart_at=delay):
                if self._forget(run_id, attempt) is None:
                    return  # a RunActor that was given up on (wedged) ended late
                if delay is not None:
                    self._schedule_restart(run_id, delay)
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

    def _on_tick(self) -> None:
        try:
            self._renew_lease()
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
                self._take_over_dead_nodes()
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
        ref = RunActor.start(
            run=run, deps=self.deps, supervisor=self.actor_ref, adopt=adopt, uid=uid
        )
        marker = next(a.process_marker for a in run.attempts if a.attempt == run.attempt)
        self.live[run.id] = LiveAttempt(ref=ref, attempt=run.attempt, marker=marker)

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

    def _has_free_slot(self) -> bool:
        """A slot (RUNVISOR_MAX_RUNNING) and, with RUNVISOR_RUN_UIDS, a free uid: a run never
        shares a uid; it waits for one, queued (or its restart does)."""
        limit = self.deps.settings.max_running
        if limit > 0 and len(self.live) >= limit:
            return False
        return self.deps.run_uids is None or self.deps.run_uids.available()

    def _claim_args(self) -> dict[str, str]:
        return {"marker": uuid.uuid4().hex, "boot_id": boot_id()}

    def _fill_slots(self, *, raise_errors: bool = False) -> None:
        try:
            while self._has_free_slot():
                run = self.deps.journal.claim_next_queued(**self._claim_args())
                if run is None:
                    return
                self._spawn(run)
        except StoreUnavailable:
            if raise_errors:
                raise
            # the next tick tries again

    def _schedule_restart(self, run_id: int, delay_s: float) -> None:
        log.info("restart scheduled", run_id=run_id, delay_s=round(delay_s, 3))
        self.restarts[run_id] = self.deps.timers.schedule(
            delay_s, self.actor_ref, m.RestartDue(run_id)
        )

    def _restart(self, run_id: int) -> None:
        if not self._has_free_slot():
            self._schedule_restart(run_id, TICK_S)  # RUNVISOR_MAX_RUNNING counts restarts too
            return
        try:
            run = self.deps.journal.claim_run(run_id, **self._claim_args())
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
            self._clear_leftover_spools(keep={run.id for run in runs})
            self._clear_leftover_cgroups(runs)
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
        if run.status is RunStatus.RESTARTING:
            due = run.next_attempt_at.timestamp() - time.time() if run.next_attempt_at else 0
            self._schedule_restart(run.id, max(due, 0.0))
            return
        if self.deps.run_uids is not None:
            # Before anything new starts: its uid is not free while its processes may run.
            self.deps.run_uids.hold_recorded(run.id, run.attempt)
        attempt = next((a for a in run.attempts if a.attempt == run.attempt), None)
        if attempt is None or attempt.pid is None:
            # Claimed, but the node went down before the process was recorded: kill what
            # carries the attempt's marker, then the policy decides.
            log.warning("run lost: its process was never recorded", run_id=run.id)
            marker = attempt.process_marker if attempt else None
            self._close(run.id, Unended(run.attempt, AttemptEndReason.LOST, marker, True), run)
            return
        log.info("adopting run", run_id=run.id, pid=attempt.pid, attempt=attempt.attempt)
        self.deps.journal.audit("run.adopt", run_id=run.id, detail={"pid": attempt.pid})
        self._spawn(run, adopt=attempt)

    def _clear_leftover_spools(self, keep: set[int]) -> None:
        """Spool directories of runs this node no longer owns (they ended, or another node took
        them over while this one was away): kill what of them still runs here, remove them."""
        spool_dir, work_dir = self.deps.settings.spool_dir, self.deps.settings.work_dir
        stale = [
            int(p.name) for p in spool_dir.iterdir() if p.name.isdigit() and int(p.name) not in keep
        ]
        if not stale:
            return
        markers = self.deps.journal.attempt_markers(stale)
        for run_id in stale:
            killed = sum(
                kill_attempt_tree(leader=None, marker=mk) for mk in markers.get(run_id, [])
            )
            if killed:
                log.warning(
                    "killed processes of a run this node no longer owns",
                    run_id=run_id,
                    processes=killed,
                )
                self.deps.journal.audit(
                    "run.orphans_killed", run_id=run_id, detail={"processes": killed}
                )
            shutil.rmtree(spool_dir / str(run_id), ignore_errors=True)
            shutil.rmtree(work_dir / str(run_id), ignore_errors=True)

    def _attempt_cgroups(self) -> list[tuple[int, int, AttemptCgroup]]:
        return list(self.deps.cgroups.existing()) if self.deps.cgroups else []

    def _clear_leftover_cgroups(self, runs: list[Run]) -> None:
        """Cgroups of attempts this node no longer runs (ended while it was away, or an older
        attempt of a run): kill what is in them and remove them."""
        current = {(run.id, run.attempt) for run in runs if run.status is RunStatus.RUNNING}
        for run_id, attempt_no, cgroup in self._attempt_cgroups():
            if (run_id, attempt_no) in current:
                continue
            killed = self.closer.kill_cgroup(run_id, attempt_no, self.node_id)
            if killed:
                log.warning(
                    "killed processes of an attempt this node no longer runs",
                    run_id=run_id,
                    attempt=attempt_no,
                    processes=killed,
                    cgroup=str(cgroup.path),
                )

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
        now = time.monotonic()
        for run_id, entry in list(self.live.items()):
            if entry.ping is not None:
                sent_at, future = entry.ping
                try:
                    future.get(timeout=0)
                except pykka.Timeout:
                    if self._is_wedged(run_id, entry, sent_at, now):
                        self._handle_wedged(run_id, entry)
                    continue
                except pykka.ActorDeadError:
                    self._handle_dead(run_id, entry)
                    continue
            try:
                entry.ping = (now, entry.ref.ask(m.Ping(), block=False))
            except pykka.ActorDeadError:
                self._handle_dead(run_id, entry)

    def _is_wedged(self, run_id: int, entry: LiveAttempt, sent_at: float, now: float) -> bool:
        """Whether a ping still unanswered means its RunActor is wedged.

        A RunActor blocked in a PostgreSQL or Redis call (a locked row, a paused server, an
        exhausted pool) is slow, not wedged: it answers once the store does, and its run must
        not be killed for that, however long it takes. So only time spent outside store calls
        counts: the ping's clock starts again whenever the actor leaves one (the journal and
        the live state mark every call in `store_waits`). The waiting stays on the actor
        rather than moving to another thread: its writes stay in order with its exits and
        stops, and a store outage needs no queue of pending writes.
        """
        timeout = self.deps.settings.ping_timeout_s
        wait = self.deps.store_waits.of(entry.ref.actor_urn)
        if wait.waiting_since is not None:
            if now - wait.waiting_since > timeout and entry.logged_store_wait != wait.waiting_since:
                entry.logged_store_wait = wait.waiting_since
                log.warning(
                    "run actor waits on the store; not treated as stuck",
                    run_id=run_id,
                    attempt=entry.attempt,
                    waited_s=round(now - wait.waiting_since, 1),
                )
            return False
        late_since = max(sent_at, wait.left_at or sent_at)
        return now - late_since > timeout

    def _handle_wedged(self, run_id: int, entry: LiveAttempt) -> None:
        log.error(
            "run actor does not answer; treating the attempt as stuck",
            run_id=run_id,
            attempt=entry.attempt,
        )
        # Forgotten only once its end is recorded: until then stops still go to it, and a
        # PostgreSQL outage (which slows every RunActor) cannot orphan the run.
        if self._close(run_id, Unended(entry.attempt, AttemptEndReason.STUCK, entry.marker, True)):
            self._forget(run_id, entry.attempt)

    def _handle_dead(self, run_id: int, entry: LiveAttempt) -> None:
        """A RunActor gone without a word (its AttemptEnded or RunActorFailed may yet come)."""
        try:
            run = self.deps.journal.get_run(run_id)
        except StoreUnavailable:
            return
        ours = run is not None and run.attempt == entry.attempt and run.node == self.node_id
        if ours and run is not None and run.status is RunStatus.RUNNING:
            # Died without ending its attempt (e.g. in on_start): end it as a failed actor.
            self._forget(run_id, entry.attempt)
            self._close(
                run_id,
                Unended(entry.attempt, AttemptEndReason.ACTOR_FAILED, entry.marker, True),
                run,
            )
            return
        # It ended its attempt (its AttemptEnded may still be on the way, so wait a little
        # before dropping it), or it stood down because another node has the run now.
        now = time.monotonic()
        if entry.dead_since is None:
            entry.dead_since = now
        elif now - entry.dead_since > SLOW_CHECK_S:
            self._forget(run_id, entry.attempt)

    def _renew_lease(self) -> None:
        if self.deps.live.renew_lease(self.node_id, self.deps.settings.lease_ttl_s):
            if self.redis_ok_since is None:
                self.redis_ok_since = time.monotonic()
        else:
            self.redis_ok_since = None

    def _take_over_dead_nodes(self) -> None:
        """Runs of a node whose lease expired are lost there: end their attempts, restart here."""
        # After a Redis outage every lease has lapsed: give the other nodes a whole lease time
        # (and a half) to renew theirs before reading a missing lease as a dead node.
        settled = 1.5 * self.deps.settings.lease_ttl_s
        if self.redis_ok_since is None or time.monotonic() - self.redis_ok_since < settled:
            return
        try:
            nodes = self.deps.journal.nodes_with_active_runs()
        except StoreUnavailable:
            return
        for node in nodes:
            if self.deps.live.lease_held(node) is not False:
                continue  # alive, or Redis cannot tell: never take over on a guess
            try:
                runs = self.deps.journal.take_over_runs(node)
            except StoreUnavailable:
                return
            log.warning(
                "took over the runs of a node whose lease expired",
                node=node,
                runs=[r.id for r in runs],
            )
            for run in runs:
                if run.status is RunStatus.RESTARTING:
                    self._schedule_restart(run.id, 0.0)
                else:
                    # When the dead node ran on this machine too, its cgroup of the attempt
                    # holds every process, even those the marker no longer finds.
                    self.closer.kill_cgroup(run.id, run.attempt, node)
                    attempt = next((a for a in run.attempts if a.attempt == run.attempt), None)
                    marker = attempt.process_marker if attempt else None
                    self._close(
                        run.id, Unended(run.attempt, AttemptEndReason.LOST, marker, False), run
                    )
