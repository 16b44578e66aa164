"""The root Supervisor actor: spawns one RunActor per attempt, queues, restarts, adopts.

It owns the table of live RunActors of this node. Decisions about a finished attempt are made
by the RunActor with the restart policy; the Supervisor schedules the restarts, fills free
slots from the queue in PostgreSQL, pings RunActors to catch a wedged one, and at start-up
adopts the runs this node owned before it stopped or crashed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from typing import Any

import pykka

from runvisor.actors import messages as m
from runvisor.actors.proctree import kill_attempt_tree
from runvisor.actors.run_actor import RunActor, RunDeps
from runvisor.actors.spawn import ProcessIdentity
from runvisor.actors.timer import TimerHandle
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import AttemptEndReason, Run, RunStatus
from runvisor.supervisor.policy import attempt_history, decide

TICK_S = 1.0
TAKEOVER_CHECK_S = 5.0  # how often to look for nodes whose lease expired

log = get_logger("runvisor.supervisor")


class Supervisor(pykka.ThreadingActor):
    def __init__(self, *, deps: RunDeps) -> None:
        super().__init__()
        self.deps = deps
        self.node_id = deps.journal.node_id
        self.run_actors: dict[int, pykka.ActorRef[RunActor]] = {}
        self.attempts: dict[int, int] = {}  # run id -> the attempt its RunActor runs
        self.pings: dict[int, tuple[float, pykka.Future[Any]]] = {}
        self.restarts: dict[int, TimerHandle] = {}
        self.recovered = False
        self.tick: TimerHandle | None = None
        self.next_takeover_check = 0.0
        # Attempts to end whose RunActor cannot (failed, wedged, lost) while PostgreSQL was
        # down: run id -> (attempt, reason, local); retried every tick until recorded.
        self.unended: dict[int, tuple[int, AttemptEndReason, bool]] = {}
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
        """Start a queued run now if a slot is free. False: it stays queued for its turn."""
        if not self._has_free_slot():
            return False
        run = self.deps.journal.claim_run(run_id)
        if run is None:
            return False
        self._spawn(run)
        return True

    def stop_run(self, run_id: int, grace_s: float, requested_by: str) -> bool:
        """Stop a run this node owns. False if it is not (or no longer) here."""
        ref = self.run_actors.get(run_id)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(m.StopRun(grace_s=grace_s, requested_by=requested_by))
                return True
        handle = self.restarts.pop(run_id, None)
        if handle is not None:
            handle.cancel()
        try:
            return self.deps.journal.stop_restarting_run(
                run_id, reason=f"stopped by {requested_by} while waiting to restart"
            )
        except StoreUnavailable:
            return False

    def running_count(self) -> int:
        return len(self.run_actors)

    def detach_all(self, timeout_s: float = 10.0) -> int:
        """Shutdown: every RunActor stores its output and stops; the processes go on."""
        refs = list(self.run_actors.values())
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(m.Detach())
        deadline = time.monotonic() + timeout_s
        for ref in refs:
            while ref.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.run_actors.clear()
        self.attempts.clear()
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
        match message:
            case m.AttemptEnded(run_id=run_id, attempt=attempt, restart_at=delay):
                if not self._forget(run_id, attempt):
                    return  # a RunActor that was given up on (wedged) ended late
                if delay is not None:
                    self._schedule_restart(run_id, delay)
                self._fill_slots()
            case m.RunActorFailed(run_id=run_id, attempt=attempt):
                if not self._forget(run_id, attempt):
                    return
                self._end_failed_attempt(run_id, attempt, AttemptEndReason.ACTOR_FAILED)
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
            for run_id, (attempt, reason, local) in list(self.unended.items()):
                self._end_failed_attempt(run_id, attempt, reason, local=local)
            self._ping_run_actors()
            self._take_over_dead_nodes()
            self._fill_slots()
        finally:
            self.tick = self.deps.timers.schedule(TICK_S, self.actor_ref, m.SupervisorTick())

    # Internals

    def _spawn(self, run: Run, adopt: Any = None) -> None:
        ref = RunActor.start(run=run, deps=self.deps, supervisor=self.actor_ref, adopt=adopt)
        self.run_actors[run.id] = ref
        self.attempts[run.id] = run.attempt

    def _forget(self, run_id: int, attempt: int) -> bool:
        """Drop the RunActor of `attempt`; False if the table holds another attempt (or none)."""
        if self.attempts.get(run_id) != attempt:
            return False
        del self.attempts[run_id]
        self.run_actors.pop(run_id, None)
        self.pings.pop(run_id, None)
        return True

    def _has_free_slot(self) -> bool:
        limit = self.deps.settings.max_running
        return limit <= 0 or len(self.run_actors) < limit

    def _fill_slots(self) -> None:
        try:
            while self._has_free_slot():
                run = self.deps.journal.claim_next_queued()
                if run is None:
                    return
                self._spawn(run)
        except StoreUnavailable:
            return  # the next tick tries again

    def _schedule_restart(self, run_id: int, delay_s: float) -> None:
        log.info("restart scheduled", run_id=run_id, delay_s=round(delay_s, 3))
        self.restarts[run_id] = self.deps.timers.schedule(
            delay_s, self.actor_ref, m.RestartDue(run_id)
        )

    def _restart(self, run_id: int) -> None:
        try:
            run = self.deps.journal.claim_run(run_id)
        except StoreUnavailable:
            self._schedule_restart(run_id, TICK_S)
            return
        if run is None:
            return  # stopped meanwhile
        log.info("restarting", run_id=run_id, attempt=run.attempt)
        self._spawn(run)

    def _recover(self) -> None:
        """Adopt the runs this node owned before; restart or end the ones that are gone."""
        try:
            runs = self.deps.journal.active_runs_of_node()
        except StoreUnavailable as exc:
            log.warning("recovery waits for PostgreSQL", error=exc.message)
            return
        self.recovered = True
        self._clear_leftover_spools(keep={run.id for run in runs})
        for run in runs:
            if run.id in self.run_actors or run.id in self.restarts:
                continue
            if run.status is RunStatus.RESTARTING:
                due = run.next_attempt_at.timestamp() - time.time() if run.next_attempt_at else 0
                self._schedule_restart(run.id, max(due, 0.0))
                continue
            attempt = next((a for a in run.attempts if a.attempt == run.attempt), None)
            if attempt is None or attempt.pid is None:
                log.warning("run lost: its attempt was never recorded", run_id=run.id)
                self._end_failed_attempt(run.id, run.attempt, AttemptEndReason.LOST, run=run)
                continue
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

    def _renew_lease(self) -> None:
        if self.deps.live.renew_lease(self.node_id, self.deps.settings.lease_ttl_s):
            if self.redis_ok_since is None:
                self.redis_ok_since = time.monotonic()
        else:
            self.redis_ok_since = None

    def _take_over_dead_nodes(self) -> None:
        """Runs of a node whose lease expired are lost there: end their attempts, restart here."""
        now = time.monotonic()
        if now < self.next_takeover_check:
            return
        # After a Redis outage every lease has lapsed: give the other nodes a whole lease time
        # (and a half) to renew theirs before reading a missing lease as a dead node.
        settled = 1.5 * self.deps.settings.lease_ttl_s
        if self.redis_ok_since is None or now - self.redis_ok_since < settled:
            return
        self.next_takeover_check = now + TAKEOVER_CHECK_S
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
                    self._end_failed_attempt(
                        run.id, run.attempt, AttemptEndReason.LOST, run=run, local=False
                    )

    def _ping_run_actors(self) -> None:
        now = time.monotonic()
        for run_id, ref in list(self.run_actors.items()):
            sent = self.pings.get(run_id)
            if sent is not None:
                sent_at, future = sent
                try:
                    future.get(timeout=0)
                except pykka.Timeout:
                    if now - sent_at > self.deps.settings.ping_timeout_s:
                        self._handle_wedged(run_id)
                    continue
                except Exception:
                    pass  # a dead actor: its failure message is on the way
            with contextlib.suppress(pykka.ActorDeadError):
                self.pings[run_id] = (now, ref.ask(m.Ping(), block=False))

    def _handle_wedged(self, run_id: int) -> None:
        attempt = self.attempts[run_id]
        log.error(
            "run actor does not answer; treating the attempt as stuck",
            run_id=run_id,
            attempt=attempt,
        )
        # Forgotten only once its end is recorded: until then stops still go to it, and a
        # PostgreSQL outage (which slows every RunActor) cannot orphan the run.
        if self._end_failed_attempt(run_id, attempt, AttemptEndReason.STUCK):
            self._forget(run_id, attempt)

    def _end_failed_attempt(
        self,
        run_id: int,
        attempt_no: int,
        reason: AttemptEndReason,
        run: Run | None = None,
        *,
        local: bool = True,
    ) -> bool:
        """End an attempt whose RunActor cannot (failed, wedged, lost): kill, record, decide.

        True once recorded (or nothing is left to record); False while PostgreSQL is down,
        and the next tick tries again.
        """
        self.unended[run_id] = (attempt_no, reason, local)
        try:
            run = run or self.deps.journal.get_run(run_id)
        except StoreUnavailable:
            return False
        if run is None or run.attempt != attempt_no or run.status.is_terminal:
            self.unended.pop(run_id, None)
            return True
        attempt = next((a for a in run.attempts if a.attempt == attempt_no), None)
        killed = 0
        if attempt is not None and local and attempt.pid is not None:
            # Its RunActor is gone or wedged: let the reaper collect the wrapper's exit.
            self.deps.watcher.unwatch(attempt.pid)
            killed = kill_attempt_tree(
                leader=ProcessIdentity(attempt.pid, attempt.pid_start_ticks or 0),
                marker=attempt.process_marker,
            )
        elif attempt is not None:
            # Another node's attempt: its pid means nothing here, its unique marker does (the
            # nodes may share a machine).
            killed = kill_attempt_tree(leader=None, marker=attempt.process_marker)
        started = attempt.started_at.timestamp() if attempt else time.time()
        history = attempt_history(run, started_at=started, ended_at=time.time(), succeeded=False)
        decision = decide(
            run.restart_policy, reason=reason, succeeded=False, attempts=history, now=time.time()
        )
        log.warning(
            "attempt ended by the supervisor",
            run_id=run_id,
            reason=str(reason),
            status=str(decision.status),
            killed=killed,
        )
        try:
            self.deps.journal.end_attempt(
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
            return False
        self.unended.pop(run_id, None)
        if decision.restart_delay_s is not None:
            self._schedule_restart(run_id, decision.restart_delay_s)
        return True
