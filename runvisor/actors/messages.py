"""Messages told to actors. Plain frozen dataclasses, dispatched by type in on_receive."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlushTick:
    """Read new spool output, store it, publish it; check for a stuck attempt."""


@dataclass(frozen=True, slots=True)
class FlushSoon:
    """256 KiB or more are waiting in the spool: flush now, not at the next tick."""


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """The attempt's main process has exited (told by the exit watcher)."""


@dataclass(frozen=True, slots=True)
class StopRun:
    """An operator asked to stop the run: SIGTERM now, SIGKILL after `grace_s`."""

    grace_s: float
    requested_by: str


@dataclass(frozen=True, slots=True)
class KillDeadline:
    """The grace period is over: SIGKILL whatever of the attempt is left."""


@dataclass(frozen=True, slots=True)
class TimeoutDeadline:
    """The attempt ran for its whole `timeout_s`."""


@dataclass(frozen=True, slots=True)
class Detach:
    """The service is shutting down: store what is pending and let the process run on."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Asked by the Supervisor: a RunActor that does not answer in time is wedged."""


# Told to the Supervisor


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    run_id: int
    attempt: int
    restart_delay_s: float | None  # seconds until the next attempt; None: the run ended


@dataclass(frozen=True, slots=True)
class RunActorFailed:
    run_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class SupervisorTick:
    """Renew the node lease, poll the queue, ping RunActors, retry pending work."""


@dataclass(frozen=True, slots=True)
class RestartDue:
    run_id: int
