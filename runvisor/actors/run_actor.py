"""RunActor: one per attempt of a run. Owns the attempt's process, spool and timers.

It never blocks on the process: exits arrive as ProcessExited from the exit watcher, and
output is pulled from the spool file on FlushTick. What to do after the attempt ends is the
restart policy's call (runvisor.supervisor.policy); the Supervisor only schedules restarts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka

from runvisor.actors import messages as m
from runvisor.actors.attempt_processes import AttemptProcesses
from runvisor.actors.cgroups import CgroupTree
from runvisor.actors.exit_watcher import ExitWatcher
from runvisor.actors.flush_nudger import FlushNudger
from runvisor.actors.limits import effective_limits
from runvisor.actors.output_pump import OutputPump
from runvisor.actors.run_env import run_environment
from runvisor.actors.run_uids import UidPool
from runvisor.actors.run_user import RunUser
from runvisor.actors.spawn import ExitStatus, spawn_attempt
from runvisor.actors.timer import TimerHandle, TimerService
from runvisor.actors.uid_sweep import Swept
from runvisor.config import Settings
from runvisor.errors import Fenced, StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Attempt, AttemptEndReason, Run, RunStatus
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.policy import Decision, attempt_history, decide

RETRY_S = 1.0  # how soon to retry a store write that failed
FAIL_ACTOR_MARKER = b"@@runvisor-test:fail-actor@@"
WEDGE_ACTOR_MARKER = b"@@runvisor-test:wedge-actor@@"


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What every RunActor works with; built once by the service."""

    settings: Settings
    journal: RunJournal
    live: LiveState
    timers: TimerService
    watcher: ExitWatcher
    nudger: FlushNudger
    store_waits: StoreWaits  # the journal's and the live state's calls, per RunActor
    # Who runs execute as; None: the service's own user (tests of the actors alone).
    run_user: RunUser | None = None
    # One cgroup per attempt under this tree; None: processes are found by /proc scans.
    cgroups: CgroupTree | None = None
    # RUNVISOR_RUN_UIDS: each attempt runs as a uid of its own from here (run_user unused).
    run_uids: UidPool | None = None


class RunActor(pykka.ThreadingActor):
    # A RunActor stuck in a store call must not keep the process alive at shutdown: its run
    # is adopted at the next start anyway.
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
        self.run = run
        self.deps = deps
        self.supervisor = supervisor
        self.adopt = adopt
        # With RUNVISOR_RUN_UIDS, the attempt's own uid (the Supervisor took or held it).
        # None there: an adopted attempt started without one; never a new spawn (see _spawn).
        self.uid = uid
        self.run_user: RunUser | None = deps.run_user
        if deps.run_uids is not None:
            self.run_user = deps.run_uids.user(uid) if uid is not None else None
        self.spool_dir = deps.settings.spool_dir / str(run.id)
        self.work_dir = deps.settings.work_dir / str(run.id)
        self.status_path = self.spool_dir / f"{run.attempt}.status"
        # The attempt's row (and its marker) was written when the run was claimed.
        self.attempt_row = next(a for a in run.attempts if a.attempt == run.attempt)
        self.marker = self.attempt_row.process_marker
        cgroup = deps.cgroups.attempt(run.id, run.attempt) if deps.cgroups else None
        if adopt is not None and cgroup is not None and not cgroup.exists():
            cgroup = None  # started before this node had cgroups: found by /proc scans
        self.procs = AttemptProcesses(
            marker=self.marker,
            status_path=self.status_path,
            adopted=adopt is not None,
            cgroup=cgroup,
            limits=effective_limits(deps.settings.run_limits, run.limits),
        )
        self.exit: ExitStatus | None = None
        self.end_reason: AttemptEndReason | None = None
        self.stop_by: str | None = None
        self.attempt_recorded = adopt is not None
        self.started_at = time.time()
        self.pump: OutputPump | None = None
        self.timers: dict[str, TimerHandle] = {}
        self.finished = False
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
            self.finished = True
            self.actor_ref.stop(block=False)

    def _start(self) -> None:
        self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._make_work_dir()
        spool_path = self.spool_dir / f"{self.run.attempt}.out"
        if self.adopt is not None:
            self._adopt(self.adopt, spool_path)
        else:
            self._spawn(spool_path)
        if self.finished:
            return
        self._publish_state()
        self._schedule("flush", self.deps.settings.flush_interval_s, m.FlushTick())
        if self.run.timeout_s:
            elapsed = time.time() - self.started_at
            self._schedule("timeout", self.run.timeout_s - elapsed, m.TimeoutDeadline())
        if self.run.stop_requested_at is not None:
            # A stop was under way when the service went down: finish it, in the grace left.
            grace = self.run.stop_grace_s
            grace = self.deps.settings.default_grace_s if grace is None else grace
            elapsed = time.time() - self.run.stop_requested_at.timestamp()
            self._terminate(
                AttemptEndReason.STOPPED, max(grace - elapsed, 0.0), self.run.stop_requested_by
            )

    def _make_work_dir(self) -> None:
        """The run's working directory: the run user's own (0700), in the service's work dir."""
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = self.run_user
        if user is None or not user.switches:
            return
        uids = self.deps.run_uids
        if uids is not None and self.adopt is None:
            # What earlier attempts of the run left there belongs to their uids: this one's now.
            uids.hand_over_work_dir(self.work_dir, user.uid)
        else:
            os.chown(self.work_dir, user.uid, user.gid)

    def _spawn(self, spool_path: Path) -> None:
        if self.deps.run_uids is not None and self.uid is None:
            # Never as root, nor as a uid another attempt holds: the Supervisor hands one out.
            raise RuntimeError("no uid of RUNVISOR_RUN_UIDS was handed to this attempt")
        base_offset = self.run.output_bytes
        env = run_environment(
            run_id=self.run.id,
            attempt=self.run.attempt,
            node_id=self.deps.journal.node_id,
            marker=self.marker,
            requested=self.run.env,
            run_user=self.run_user,
            work_dir=self.work_dir,
        )
        ref = self.actor_ref
        try:
            if self.deps.run_uids is not None and self.uid is not None:
                # Before the spawn: after a restart, adoption holds this uid again from here.
                self.deps.run_uids.record(self.run.id, self.run.attempt)
            self.procs.create_cgroup()
            self.procs.identity = self.deps.watcher.spawn_watched(
                lambda: spawn_attempt(
                    code=self.run.code,
                    env=env,
                    spool_path=spool_path,
                    status_path=self.status_path,
                    cwd=self.work_dir,
                    run_user=self.run_user,
                    prepare=self.procs.prepare,
                ),
                lambda: _tell_quietly(ref, m.ProcessExited()),
            )
        except (OSError, ValueError) as exc:
            self.log.error("spawn failed", error=str(exc))
            self.exit = ExitStatus(exit_code=None, signal=None)
            self.end_reason = AttemptEndReason.EXITED
            self.spawn_error = f"could not start: {exc}"
            self._end()
            return
        self.log = self.log.bind(pid=self.procs.pid)
        self.pump = self._make_pump(spool_path, base_offset=base_offset, stored_in_spool=0)
        self._record_attempt()
        self.log.info("run started", node=self.deps.journal.node_id)

    def _adopt(self, attempt: Attempt, spool_path: Path) -> None:
        assert attempt.pid is not None
        alive = self.procs.adopt(attempt.pid, attempt.pid_start_ticks, attempt.boot_id)
        self.started_at = attempt.started_at.timestamp()
        self.log = self.log.bind(pid=attempt.pid)
        self.pump = self._make_pump(
            spool_path,
            base_offset=attempt.output_offset,
            stored_in_spool=max(self.run.output_bytes - attempt.output_offset, 0),
        )
        ref = self.actor_ref
        if not alive or not self.deps.watcher.watch(
            attempt.pid, lambda: _tell_quietly(ref, m.ProcessExited())
        ):
            self.actor_ref.tell(m.ProcessExited())
        self.log.info("run adopted", output_offset=self.pump.stored_bytes)

    def _make_pump(self, spool_path: Path, *, base_offset: int, stored_in_spool: int) -> OutputPump:
        self.deps.nudger.watch(self.actor_ref, spool_path, stored_in_spool)
        return OutputPump(
            run_id=self.run.id,
            attempt=self.run.attempt,
            spool_path=spool_path,
            base_offset=base_offset,
            stored_in_spool=stored_in_spool,
            max_output_bytes=self.run.max_output_bytes,
            journal=self.deps.journal,
            live=self.deps.live,
            keep_last_stored=self.deps.settings.test_hooks,
        )

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
        if not self.finished and self.procs.identity is not None:
            with contextlib.suppress(Exception):
                self.procs.kill()
        with contextlib.suppress(pykka.ActorDeadError):
            self.supervisor.tell(m.RunActorFailed(self.run.id, self.run.attempt))

    def _release(self) -> None:
        self.deps.store_waits.unregister(self.actor_urn)
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self.deps.nudger.unwatch(self.actor_ref)
        if self.procs.pid is not None:
            self.deps.watcher.unwatch(self.procs.pid)
        if self.pump is not None:
            self.pump.close()

    # Messages

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.FlushTick | m.KillDeadline | m.TimeoutDeadline) and not any(
            handle.message is message for handle in self.timers.values()
        ):
            return None  # a tick cancelled after the timer thread had sent it: stale
        match message:
            case m.FlushTick():
                self._on_flush_tick()
            case m.FlushSoon():
                if not self.finished and self.exit is None:
                    self._flush()
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
            case m.Ping():
                return True
        return None

    def _test_hooks(self) -> None:
        """With RUNVISOR_TEST_HOOKS on, a run printing a marker makes this actor fail or hang."""
        if not self.deps.settings.test_hooks or self.pump is None:
            return
        stored, self.pump.last_stored = self.pump.last_stored, b""
        if FAIL_ACTOR_MARKER in stored:
            raise RuntimeError("failure injected by a test hook")
        if WEDGE_ACTOR_MARKER in stored:
            self.log.warning("test hook: this actor stops answering for a while")
            time.sleep(3 * self.deps.settings.ping_timeout_s)

    def _stand_down(self) -> None:
        """The attempt was superseded while this actor was away: stop, write nothing more.

        Its processes must not run on beside the attempt that replaced it.
        """
        self.log.warning("attempt superseded; this actor stands down")
        self.finished = True
        if self.procs.identity is not None:
            self.procs.kill()
        self._release_cgroup()
        self._release_uid()
        self._remove_attempt_files()
        self.actor_ref.stop(block=False)

    def _on_flush_tick(self) -> None:
        self.timers.pop("flush", None)
        if self.finished:
            return
        if self.pump is not None:
            self.pump.observe()
        drained = self._flush()
        if self.finished:
            return
        self._test_hooks()
        if self.exit is None and self.procs.identity and not self.procs.leader_alive():
            self._on_process_exited()  # a safety net: the exit watcher tells at once, normally
            return
        if self.exit is not None:
            if self._leftovers_may_finish():
                self._schedule("flush", self.deps.settings.flush_interval_s, m.FlushTick())
            else:
                self._try_end()
            return
        stuck_after = self.run.stuck_after_s
        if (
            stuck_after
            and self.end_reason is None
            and self.pump is not None
            and time.monotonic() - self.pump.last_output_at > stuck_after
        ):
            self.log.warning("attempt stuck: no output", stuck_after_s=stuck_after)
            self._terminate(AttemptEndReason.STUCK, self.deps.settings.default_grace_s)
        delay = 0.0 if drained is False else self.deps.settings.flush_interval_s
        self._schedule("flush", delay, m.FlushTick())

    def _flush(self, *, to_eof: bool = False) -> bool | None:
        """True: all stored; False: more is waiting; None: PostgreSQL is down, retry later."""
        if self.pump is None:
            return True
        if not self.attempt_recorded:
            self._record_attempt()
        try:
            drained = self.pump.flush(to_eof=to_eof)
        except StoreUnavailable as exc:
            self.log.warning("output not stored yet; will retry", error=exc.message)
            return None
        except Fenced:
            self._stand_down()
            return None
        if self.pump.truncated:
            self.deps.nudger.unwatch(self.actor_ref)  # nothing more is stored: no hurry
        else:
            self.deps.nudger.stored(self.actor_ref, self.pump.position)
        return drained

    def _record_attempt(self) -> None:
        identity = self.procs.identity
        assert identity is not None
        try:
            self.deps.journal.start_attempt(
                self.run, pid=identity.pid, start_ticks=identity.start_ticks
            )
            self.attempt_recorded = True
        except StoreUnavailable as exc:
            self.log.warning("attempt not recorded yet; will retry", error=exc.message)

    def _on_process_exited(self) -> None:
        if self.exit is not None or self.procs.identity is None:
            return
        status = self.procs.exit_status()
        if status is None and self.end_reason is not None:
            status = ExitStatus(exit_code=None, signal=signal.SIGKILL)  # killed before recording
        self.exit = status or ExitStatus(exit_code=None, signal=None)
        if self.end_reason is None:
            self.end_reason = (
                AttemptEndReason.EXITED if status is not None else AttemptEndReason.LOST
            )
        self.log.info("process exited", exit_code=self.exit.exit_code, signal=self.exit.signal)
        if self._leftovers_may_finish():
            return
        self._try_end()

    def _leftovers_may_finish(self) -> bool:
        """While stopping, processes left after the main one get the rest of the grace period."""
        if self.end_reason is AttemptEndReason.EXITED or "kill" not in self.timers:
            return False
        return self.procs.any_left()

    def _terminate(self, reason: AttemptEndReason, grace_s: float, by: str | None = None) -> None:
        if self.finished or self.procs.identity is None:
            return
        if reason is AttemptEndReason.STOPPED and self.end_reason not in (None, reason):
            # An operator's stop outranks a timeout or a stuck verdict already under way: it
            # is never restarted. (PostgreSQL enforces it too, see RunJournal.end_attempt.)
            self.end_reason, self.stop_by = reason, by
        if self.end_reason is None and self.exit is None:
            self.end_reason = reason
            self.stop_by = by
            self.timers.pop("timeout", _NO_TIMER).cancel()
            sent, sent_more = self.procs.terminate()
            self.log.info(
                "stopping",
                reason=str(reason),
                grace_s=grace_s,
                by=by,
                group_signalled=sent,
                signalled=sent_more,
            )
        elif self.end_reason is None:
            return  # it exited on its own already; its exit status tells the outcome
        if grace_s <= 0:
            self._kill_now()
            return
        current = self.timers.get("kill")
        deadline = time.monotonic() + grace_s
        if current is None or deadline < current.deadline:
            if current is not None:
                current.cancel()
            self._schedule("kill", grace_s, m.KillDeadline())

    def _kill_now(self) -> None:
        self.timers.pop("kill", _NO_TIMER).cancel()
        if self.procs.identity is None or self.finished:
            return
        killed = self.procs.kill()
        self.log.info("killed after grace period", processes=killed)
        if self.exit is not None:
            self._try_end()

    def _try_end(self) -> None:
        """End the attempt once its process tree is gone and all output is stored."""
        if self.finished:
            return
        if self.procs.identity is not None:
            leftovers = self.procs.kill()
            if leftovers:
                self.log.info("killed leftover processes", processes=leftovers)
        if self._flush(to_eof=True) is None:
            if not self.finished:
                self._schedule("flush", RETRY_S, m.FlushTick())
            return
        self._end()

    def _end(self) -> None:
        assert self.exit is not None and self.end_reason is not None
        # Its processes are gone: before the end is shown, what its uid left is gone too
        # (processes included, which a /proc scan by marker can miss: counted as leftovers).
        swept = self._release_uid()
        if swept is not None:
            self.procs.killed += swept.processes
        exit_status = self.exit
        succeeded = self.spawn_error is None and exit_status.succeeded
        decision = self._decide(succeeded)
        run_reason = self.spawn_error or self._reason_text(decision)
        try:
            stored = self.deps.journal.end_attempt(
                self.run,
                exit_code=exit_status.exit_code,
                signal=exit_status.signal,
                reason=str(self.end_reason),
                leftovers_killed=self.procs.killed,
                run_status=decision.status,
                run_reason=run_reason,
                restart_delay_s=decision.restart_delay_s,
            )
        except StoreUnavailable as exc:
            self.log.warning("outcome not stored yet; will retry", error=exc.message)
            self._schedule("flush", RETRY_S, m.FlushTick())
            return
        if stored is None:
            self._stand_down()
            return
        self.finished = True
        restart_delay = decision.restart_delay_s if stored is RunStatus.RESTARTING else None
        self.log.info(
            "run ended" if stored.is_terminal else "attempt ended",
            status=str(stored),
            reason=run_reason,
            exit_code=exit_status.exit_code,
            signal=exit_status.signal,
            output_bytes=self.pump.stored_bytes if self.pump else 0,
        )
        # The Supervisor first: a stop arriving now must find the run no longer here.
        self.supervisor.tell(m.AttemptEnded(self.run.id, self.run.attempt, restart_delay))
        self._release_cgroup()
        self._publish_state(stored, exit_status)
        if stored.is_terminal:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:
            self._remove_attempt_files()
        self.actor_ref.stop(block=False)

    def _decide(self, succeeded: bool) -> Decision:
        assert self.end_reason is not None
        now = time.time()
        history = attempt_history(
            self.run, started_at=self.started_at, ended_at=now, succeeded=succeeded
        )
        return decide(
            self.run.restart_policy,
            reason=self.end_reason,
            succeeded=succeeded,
            attempts=history,
            now=now,
        )

    def _reason_text(self, decision: Decision) -> str | None:
        if self.end_reason is AttemptEndReason.STOPPED:
            return f"stopped by {self.stop_by}" if self.stop_by else "stopped"
        return decision.reason

    def _release_cgroup(self) -> None:
        try:
            self.procs.release()
        except OSError as exc:  # a leftover empty directory is harmless; cleaned at next start
            self.log.warning("attempt cgroup not removed", error=str(exc))

    def _release_uid(self) -> Swept | None:
        """RUNVISOR_RUN_UIDS: remove what the attempt's uid left and free it (once)."""
        if self.deps.run_uids is None or self.uid is None:
            return None
        return self.deps.run_uids.release(self.run.id, self.run.attempt)

    def _remove_attempt_files(self) -> None:
        for suffix in (".out", ".status", ".uid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool_dir / f"{self.run.attempt}{suffix}")

    def _detach(self) -> None:
        """Service shutdown: store a batch more and leave the process running.

        Not to the end of the spool: a fast writer would keep shutdown waiting. What is left is
        stored after the adoption at the next start.
        """
        self._flush()
        self.log.info("detached; the run goes on and is adopted at the next start")
        self.finished = True
        self.actor_ref.stop(block=False)

    # Helpers

    def _schedule(self, name: str, delay_s: float, message: object) -> None:
        self.timers.pop(name, _NO_TIMER).cancel()
        self.timers[name] = self.deps.timers.schedule(delay_s, self.actor_ref, message)

    def _publish_state(
        self, status: RunStatus = RunStatus.RUNNING, exit_status: ExitStatus | None = None
    ) -> None:
        self.deps.live.publish_state(
            self.run.id,
            {
                "status": str(status),
                "node": self.deps.journal.node_id,
                "pid": self.procs.pid,
                "attempt": self.run.attempt,
                "exit_code": exit_status.exit_code if exit_status else None,
                "signal": exit_status.signal if exit_status else None,
                "output_bytes": self.pump.stored_bytes if self.pump else self.run.output_bytes,
            },
            terminal=status.is_terminal,
        )


def _tell_quietly(ref: pykka.ActorRef[Any], message: object) -> None:
    """Tell, unless the actor has ended already (an exit can be noticed after a stand-down)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


class _NoTimer:
    deadline = float("inf")

    def cancel(self) -> None:
        return None


_NO_TIMER: Any = _NoTimer()
