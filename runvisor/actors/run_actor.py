"""RunActor: one per attempt of a run. Owns the attempt's process, spool and timers.

It never blocks on the process: exits arrive as ProcessExited from the exit watcher; the output
is stored by the OutputFlusher until the attempt ends, then the rest here. What to do after the
attempt ends is the restart policy's call (runvisor.policy); the Supervisor schedules restarts.
"""

from __future__ import annotations

import contextlib
import signal
import time
from types import TracebackType
from typing import Any

import pykka

from runvisor import protocol as m
from runvisor.actors import attempt_start
from runvisor.actors.attempt_end import (
    Outcome,
    Recorded,
    end_attempt,
    live_state,
    release_cgroup,
    release_uid,
)
from runvisor.actors.deps import RunDeps
from runvisor.actors.output_pump import OutputPump, stops_at_limit
from runvisor.actors.phase import Phase
from runvisor.actors.thread_starter import StartedByStarter
from runvisor.actors.timer import ActorTimers
from runvisor.errors import Fenced, StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.procs.spawn import ExitStatus

RETRY_S = 1.0  # how soon to retry a store write that failed
# Looks at a running attempt: for stuck_after_s every second (or a quarter of it), else only for
# an exit the exit watcher missed (never seen yet), every 10 s.
HOUSEKEEPING_S, SAFETY_NET_S = 1.0, 10.0


class RunActor(StartedByStarter):
    # Stuck in a store call, it must not keep the process alive at shutdown (adopted later).
    use_daemon_thread = True

    def __init__(
        self,
        *,
        run: Run,
        deps: RunDeps,
        supervisor: pykka.ActorRef[Any],
        adopt: Attempt | None = None,
        uid: int | None = None,
    ) -> None:
        super().__init__()
        self.thread_starter = deps.starter
        self.run = run
        self.deps = deps
        self.supervisor = supervisor
        self.adopt = adopt
        self.uid = uid  # with RUNVISOR_RUN_UIDS: the attempt's own (the Supervisor's choice)
        self.procs = attempt_start.attempt_processes(
            run, deps, status_path=deps.spool.status(run.id, run.attempt), adopt=adopt
        )
        self.exit: ExitStatus | None = None
        self.end_reason: AttemptEndReason | None = None
        self.stop_by: str | None = None
        self.attempt_recorded = adopt is not None
        self.started_at = time.time()
        self.pump: OutputPump | None = None
        self.timers = ActorTimers(deps.timers, self.actor_ref)
        self.phase = Phase.RUNNING
        self.spawn_error: str | None = None
        self.log = get_logger("runvisor.run", run_id=run.id, attempt=run.attempt)

    # Lifecycle

    def on_start(self) -> None:
        # The Supervisor reads there whether this actor waits on a store when a ping is late.
        self.deps.store_waits.register(self.actor_urn)
        # pykka does not call on_failure for an exception here: report it the same way, or the
        # run would stay `running` with nobody looking after it.
        try:
            self._start()
        except Exception as exc:
            self.on_failure(type(exc), exc, exc.__traceback__)
            self.phase = Phase.DONE
            self.actor_ref.stop(block=False)

    def _start(self) -> None:
        attempt_start.make_dirs(self.run, self.deps, self.uid, self.adopt)
        if self.adopt is not None:
            self._adopt(self.adopt)
        else:
            self._spawn()
        if self.phase.done:
            return
        state = self._live_state(RunStatus.RUNNING, None)
        self.deps.live.publish_state(self.run.id, state, terminal=False)
        self.timers.schedule("flush", self._tick_s(), m.FlushTick())
        if self.run.timeout_s:
            elapsed = time.time() - self.started_at
            self.timers.schedule("timeout", self.run.timeout_s - elapsed, m.TimeoutDeadline())
        if self.run.stop_requested_at is not None:
            # A stop was under way when the service went down: finish it, in the grace left.
            grace = self.run.stop_grace_s
            grace = self.deps.settings.default_grace_s if grace is None else grace
            elapsed = time.time() - self.run.stop_requested_at.timestamp()
            self._terminate(
                AttemptEndReason.STOPPED, max(grace - elapsed, 0.0), self.run.stop_requested_by
            )

    def _spawn(self) -> None:
        try:
            owner = self.actor_ref
            self.pump = attempt_start.spawn(self.run, self.deps, self.procs, owner, uid=self.uid)
        except (OSError, ValueError) as exc:
            self.log.error("spawn failed", error=str(exc))
            self.exit = ExitStatus(exit_code=None, signal=None)
            self.end_reason = AttemptEndReason.EXITED
            self.phase = Phase.EXITED
            self.spawn_error = f"could not start: {exc}"
            self._end()
            return
        self.log = self.log.bind(pid=self.procs.pid)
        self._record_process()
        self.log.info("run started", node=self.deps.journal.node_id)

    def _adopt(self, attempt: Attempt) -> None:
        self.pump, watched = attempt_start.adopt(
            self.run, self.deps, self.procs, self.actor_ref, attempt
        )
        self.started_at = attempt.started_at.timestamp()
        self.log = self.log.bind(pid=attempt.pid)
        if not watched:
            self.actor_ref.tell(m.ProcessExited())
        self.log.info("run adopted", output_offset=self.pump.stored_bytes)

    def on_stop(self) -> None:
        self._release()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.log.error("run actor failed", error=repr(exception_value))
        self._release()
        if not self.phase.done and self.procs.identity is not None:
            with contextlib.suppress(Exception):
                self.procs.kill()
        with contextlib.suppress(pykka.ActorDeadError):
            self.supervisor.tell(m.RunActorFailed(self.run.id, self.run.attempt))

    def _release(self) -> None:
        self.deps.store_waits.unregister(self.actor_urn)
        self.timers.cancel_all()
        self.deps.flusher.unwatch(self.actor_ref)
        if self.procs.pid is not None:
            self.deps.watcher.unwatch(self.procs.pid)
        if self.pump is not None:
            self.pump.close()

    # Messages

    def on_receive(self, message: Any) -> Any:
        if isinstance(
            message, m.FlushTick | m.KillDeadline | m.TimeoutDeadline
        ) and not self.timers.is_scheduled(message):
            return None  # a tick cancelled after the timer thread had sent it: stale
        match message:
            case m.FlushTick():
                self._on_flush_tick()
            case m.OutputLimitPassed():
                self._check_output_limit()
            case m.ProcessExited():
                self._on_process_exited()
            case m.StopRun(grace_s=grace_s, requested_by=by):
                self._terminate(AttemptEndReason.STOPPED, grace_s, by)
            case m.TimeoutDeadline():
                self.log.info("attempt timed out", timeout_s=self.run.timeout_s)
                self._terminate(AttemptEndReason.TIMED_OUT, self.deps.settings.default_grace_s)
            case m.KillDeadline():
                self._kill_now()
            case m.Detach():
                self._detach()
            case m.Evict(grace_s=grace_s):
                self._terminate(AttemptEndReason.DRAINED, grace_s)
            case m.Superseded() if not self.phase.done:
                self._stand_down()
            case m.Ping():
                return True
        return None

    def _stand_down(self) -> None:
        """Superseded (a write fenced off, or told): its processes must not run beside the new."""
        self.log.warning("attempt superseded; this actor stands down")
        self.phase = Phase.DONE
        if self.procs.identity is not None:
            self.procs.kill()
        release_cgroup(self.procs, self.log)
        release_uid(self.deps, self.run, self.uid)
        self.deps.spool.remove_attempt(self.run.id, self.run.attempt)
        self.actor_ref.stop(block=False)

    def _on_flush_tick(self) -> None:
        self.timers.fired("flush")
        if self.phase.done:
            return
        self._record_process()  # (the OutputFlusher stores its output, and tells its limit)
        if self.phase.awaits_exit and self.procs.leader_seen_gone():
            self._on_process_exited()  # a safety net: the exit watcher tells at once, normally
            return
        if self.phase is Phase.EXITED:
            if self._leftovers_may_finish():
                self.timers.schedule("flush", self.deps.settings.flush_interval_s, m.FlushTick())
            else:
                self._try_end()
            return
        stuck_after, pump = self.run.stuck_after_s, self.pump
        if stuck_after and self.phase is Phase.RUNNING and pump and pump.silent_for(stuck_after):
            self.log.warning("attempt stuck: no output", stuck_after_s=stuck_after)
            self._terminate(AttemptEndReason.STUCK, self.deps.settings.default_grace_s)
        self.timers.schedule("flush", self._tick_s(), m.FlushTick())

    def _tick_s(self) -> float:  # see HOUSEKEEPING_S; never less than the flush interval
        stuck = self.run.stuck_after_s
        tick = min(HOUSEKEEPING_S, stuck / 4) if stuck else SAFETY_NET_S
        return max(tick if self.attempt_recorded else RETRY_S, self.deps.settings.flush_interval_s)

    def _flush(self, *, to_eof: bool = False, hold_last: bool = False) -> bool | None:
        """True: all stored; False: more is waiting; None: PostgreSQL is down, retry later."""
        if self.pump is None:
            return True
        self._record_process()
        try:
            drained: bool | None = self.pump.flush(to_eof=to_eof, hold_last=hold_last)
        except StoreUnavailable as exc:
            self.log.warning("output not stored yet; will retry", error=exc.message)
            drained = None
        except Fenced:
            self._stand_down()
            return None
        self._check_output_limit()
        return drained

    def _record_process(self) -> None:
        if not self.attempt_recorded and self.procs.identity is not None:
            record = attempt_start.record_process
            self.attempt_recorded = record(self.deps.journal, self.run, self.procs, self.log)

    def _check_output_limit(self) -> None:  # seen from the spool's size (PostgreSQL down too)
        if self.phase is Phase.RUNNING and stops_at_limit(self.run, self.pump):
            self.log.info("output limit reached", max_output_bytes=self.run.max_output_bytes)
            self._terminate(AttemptEndReason.OUTPUT_LIMIT, self.deps.settings.default_grace_s)

    def _on_process_exited(self) -> None:
        if self.exit is not None or self.procs.identity is None:
            return
        status = self.procs.exit_status()
        if status is None and self.end_reason is not None:
            status = ExitStatus(exit_code=None, signal=signal.SIGKILL)  # killed before recording
        self.exit = status or ExitStatus(exit_code=None, signal=None)
        if not self.phase.done:  # a detached or stood-down actor does nothing more
            self.phase = Phase.EXITED
        if self.end_reason is None:
            self.end_reason = (
                AttemptEndReason.EXITED if status is not None else AttemptEndReason.LOST
            )
        self.log.debug("process exited", exit_code=self.exit.exit_code, signal=self.exit.signal)
        if self._leftovers_may_finish():
            return
        self._try_end()

    def _leftovers_may_finish(self) -> bool:
        """While stopping, processes left after the main one get the rest of the grace period."""
        if self.end_reason is AttemptEndReason.EXITED or "kill" not in self.timers:
            return False
        return self.procs.any_left()

    def _terminate(self, reason: AttemptEndReason, grace_s: float, by: str | None = None) -> None:
        if self.phase.done or self.procs.identity is None:
            return
        if reason is AttemptEndReason.STOPPED and self.end_reason not in (None, reason):
            # An operator's stop outranks a timeout or a stuck verdict already under way: it
            # is never restarted. (PostgreSQL enforces it too, see RunJournal.end_attempt.)
            self.end_reason, self.stop_by = reason, by
        if self.phase is Phase.RUNNING:
            self.phase = Phase.STOPPING
            self.end_reason, self.stop_by = reason, by
            self.timers.cancel("timeout")
            sent, sent_more = self.procs.terminate()
            self.log.info(
                "stopping",
                reason=str(reason),
                grace_s=grace_s,
                by=by,
                group_signalled=sent,
                signalled=sent_more,
            )
        if grace_s <= 0:
            self._kill_now()
            return
        current = self.timers.get("kill")
        if current is None or time.monotonic() + grace_s < current.deadline:
            self.timers.schedule("kill", grace_s, m.KillDeadline())

    def _kill_now(self) -> None:
        self.timers.cancel("kill")
        if self.procs.identity is None or self.phase.done:
            return
        killed = self.procs.kill()
        self.log.info("killed after grace period", processes=killed)
        if self.phase is Phase.EXITED:
            self._try_end()

    def _try_end(self) -> None:
        """End the attempt once its process tree is gone and all output is stored."""
        if self.phase.done:
            return
        if self.procs.identity is not None:
            leftovers = self.procs.kill()
            if leftovers:
                self.log.info("killed leftover processes", processes=leftovers)
        if self.pump is not None:
            self.pump.retire()  # the rest is this actor's to store
        if self._flush(to_eof=True, hold_last=True) is None:  # the last batch: with the end
            if not self.phase.done:
                self.timers.schedule("flush", RETRY_S, m.FlushTick())
            return
        self._end()

    def _end(self) -> None:
        assert self.exit is not None and self.end_reason is not None
        if self.end_reason is AttemptEndReason.EXITED and stops_at_limit(self.run, self.pump):
            self.end_reason = AttemptEndReason.OUTPUT_LIMIT  # past it before a flush saw it
        # Before the end is shown, what its uid left (processes included) is gone too.
        self.procs.killed += release_uid(self.deps, self.run, self.uid)
        outcome = Outcome(
            exit=self.exit,
            reason=self.end_reason,
            started_at=self.started_at,
            leftovers_killed=self.procs.killed,
            end_mechanism=self.procs.end_mechanism,
            stop_by=self.stop_by,
            spawn_error=self.spawn_error,
        )
        try:
            recorded = end_attempt(
                self.deps.journal,
                self.deps.live,
                self.deps.spool,
                self.run,
                outcome,
                procs=self.procs,
                live_state=lambda status: self._live_state(status, outcome.exit),
                log=self.log,
                on_recorded=lambda recorded: self._on_end_recorded(recorded, outcome),
                output=self.pump.held if self.pump else None,
            )
        except StoreUnavailable as exc:
            self.log.warning("outcome not stored yet; will retry", error=exc.message)
            self.timers.schedule("flush", RETRY_S, m.FlushTick())
            return
        if recorded is None:
            self._stand_down()
            return
        self.actor_ref.stop(block=False)

    def _on_end_recorded(self, recorded: Recorded, outcome: Outcome) -> None:
        self.phase = Phase.DONE
        if self.pump is not None:
            self.pump.held_stored()
        self.log.info(
            "run ended" if recorded.is_terminal else "attempt ended",
            status=str(recorded.status),
            reason=recorded.reason,
            exit_code=outcome.exit.exit_code,
            signal=outcome.exit.signal,
            output_bytes=self.pump.stored_bytes if self.pump else 0,
        )
        # The Supervisor first: a stop arriving now must find the run no longer here.
        self.supervisor.tell(
            m.AttemptEnded(self.run.id, self.run.attempt, recorded.restart_delay_s)
        )

    def _detach(self) -> None:
        """Service shutdown: store a batch more (not to the spool's end: a fast writer would
        hold shutdown up) and leave the process running, adopted at the next start."""
        self._flush()
        self.log.info("detached; the run goes on and is adopted at the next start")
        self.phase = Phase.DONE
        self.actor_ref.stop(block=False)

    def _live_state(self, status: RunStatus, exit_status: ExitStatus | None) -> dict[str, Any]:
        stored = self.pump.stored_bytes if self.pump else self.run.output_bytes
        return live_state(self.deps, self.run, self.procs.pid, stored, status, exit_status)
