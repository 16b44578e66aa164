"""The actor protocol, in one place: what is told to a RunActor and to the Supervisor, what the
Supervisor is asked (through its typed proxy), and the stop one node sends another over Redis.

Told messages are plain frozen dataclasses, dispatched by type in on_receive. Who sends which,
and when, is in docs/architecture.md ("The actor protocol"). This module sits below the actors
and the Supervisor, so that both sides (and the stores, for `StopRequest`) import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

# Told to a RunActor


@dataclass(frozen=True, slots=True)
class FlushTick:
    """Look after the attempt: a stuck verdict, a missed exit; at its end, store the rest."""


@dataclass(frozen=True, slots=True)
class OutputLimitPassed:
    """The OutputFlusher stored output past max_output_bytes of a run whose on_output_limit is
    "stop" (told once)."""


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


@dataclass(frozen=True, slots=True)
class Evict:
    """The node's drain deadline has passed: SIGTERM now, SIGKILL after `grace_s`, and end the
    attempt `drained`, which the restart policy may restart (on another node)."""

    grace_s: float


@dataclass(frozen=True, slots=True)
class Superseded:
    """Another node took this run over while this one was away (its lease lapsed): kill the
    attempt's processes at once and write nothing more."""


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


@dataclass(frozen=True, slots=True)
class RunsQueued:
    """Told by the HTTP side once a new run is committed as queued: fill the free slots."""


@dataclass(frozen=True, slots=True)
class FillSlots:
    """Told by the Supervisor to itself: claim queued runs now (coalesces RunsQueued)."""


@dataclass(frozen=True, slots=True)
class LeaseLapsed:
    """Told by the lease keeper: this node's lease had expired when it renewed it (the process
    was paused, or Redis was out of reach), so other nodes may have taken its runs over."""


# Asked of the Supervisor (by the HTTP side, the control listener and the service)


class SupervisorCalls(Protocol):
    """What the Supervisor answers when asked through its proxy. The Supervisor subclasses this,
    so a type checker holds it to these signatures."""

    def start_run(self, run_id: int) -> bool:
        """Start queued runs, oldest first, while slots are free. True if `run_id` runs now."""
        ...

    def stop_run(self, run_id: int, grace_s: float, requested_by: str) -> bool:
        """Stop a run this node owns. False if it is not (or no longer) here."""
        ...

    def running_count(self) -> int:
        """How many RunActors this node runs."""
        ...

    def detach_all(self, timeout_s: float = 10.0) -> int:
        """Shutdown: every RunActor stores its output and stops; the processes go on."""
        ...

    def drain(self, deadline_s: float | None) -> int:
        """Claim nothing more; stop what still runs after `deadline_s` (None: never), to be
        restarted elsewhere by policy. Returns how many runs this node still holds."""
        ...

    def active_count(self) -> int:
        """Runs this node still holds: running, waiting to restart, or ending."""
        ...


class SupervisorProxy(ActorMemberMixin, pykka.ActorProxy[Any]):
    """The Supervisor's proxy, typed: each call returns a pykka Future of the call's result.
    Never instantiated: `supervisor_proxy` casts a plain proxy to it."""

    start_run = proxy_method(SupervisorCalls.start_run)
    stop_run = proxy_method(SupervisorCalls.stop_run)
    running_count = proxy_method(SupervisorCalls.running_count)
    detach_all = proxy_method(SupervisorCalls.detach_all)
    drain = proxy_method(SupervisorCalls.drain)
    active_count = proxy_method(SupervisorCalls.active_count)


def supervisor_proxy(ref: pykka.ActorRef[Any]) -> SupervisorProxy:
    return cast(SupervisorProxy, ref.proxy())


# Sent from one node to another over Redis (through LiveState): the control messages


def _load_object(raw: bytes | str) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting is a RecursionError.
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


def _seconds(value: Any, name: str) -> float:
    # bool is an int to Python, never a number of seconds here.
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name}: must be a finite number of seconds, 0 or more")
    return float(value)


def _requester(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("by: must be a non-empty string")
    return value


@dataclass(frozen=True, slots=True)
class StopRequest:
    """Stop a run that another node owns: published on the owner's control channel, whose
    listener asks its Supervisor's `stop_run`. The stop is recorded in PostgreSQL first, so a
    message lost on the way is re-delivered by the owner itself."""

    run_id: int
    grace_s: float
    requested_by: str

    def to_json(self) -> str:
        # The keys are the wire format: nodes of different versions must understand each other.
        message = {"run_id": self.run_id, "grace_s": self.grace_s, "by": self.requested_by}
        return json.dumps({"type": "stop", **message})

    @classmethod
    def from_json(cls, raw: bytes | str) -> StopRequest:
        """Parse a control message; ValueError, saying why, for anything but a valid stop."""
        message = parse_control_message(raw)
        if not isinstance(message, StopRequest):
            raise ValueError(f"unknown type {_TYPE_OF[type(message)]!r}")
        return message

    @classmethod
    def _of(cls, message: dict[str, Any]) -> StopRequest:
        run_id = message.get("run_id")
        if not isinstance(run_id, int) or isinstance(run_id, bool) or run_id < 1:
            raise ValueError("run_id: must be a positive integer")
        grace_s = _seconds(message.get("grace_s"), "grace_s")
        return cls(run_id=run_id, grace_s=grace_s, requested_by=_requester(message.get("by")))


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """Drain the receiving node: published on its control channel by the node that recorded
    the drain in PostgreSQL (`nodes.state`), where the node also finds it should the message be
    lost. `deadline_s`: seconds from now after which what still runs is stopped; None: never."""

    deadline_s: float | None
    requested_by: str

    def to_json(self) -> str:
        message = {"deadline_s": self.deadline_s, "by": self.requested_by}
        return json.dumps({"type": "drain", **message})

    @classmethod
    def _of(cls, message: dict[str, Any]) -> DrainRequest:
        raw_deadline = message.get("deadline_s")
        deadline = None if raw_deadline is None else _seconds(raw_deadline, "deadline_s")
        return cls(deadline_s=deadline, requested_by=_requester(message.get("by")))


ControlMessage = StopRequest | DrainRequest
_TYPE_OF: dict[type[ControlMessage], str] = {StopRequest: "stop", DrainRequest: "drain"}


def parse_control_message(raw: bytes | str) -> ControlMessage:
    """Parse what arrived on a control channel; ValueError, saying why, for anything else."""
    message = _load_object(raw)
    match message.get("type"):
        case "stop":
            return StopRequest._of(message)
        case "drain":
            return DrainRequest._of(message)
        case other:
            raise ValueError(f"unknown type {other!r}")
