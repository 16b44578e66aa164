"""Records and enums shared by the store, the actors and the HTTP layer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.TIMED_OUT, RunStatus.LOST}
)
ACTIVE_STATUSES = frozenset(set(RunStatus) - TERMINAL_STATUSES)
LIMIT_NAMES = ("cpu", "as", "fsize", "nofile", "nproc")


class AttemptEndReason(StrEnum):
    """Why an attempt ended (run_attempts.reason)."""

    EXITED = "exited"
    TIMED_OUT = "timed_out"
    STUCK = "stuck"
    STOPPED = "stopped"
    LOST = "lost"
    ACTOR_FAILED = "actor_failed"
    DRAINED = "drained"  # stopped at its node's drain deadline; restarted elsewhere by policy


# Per-command resource limits (setrlimit(2)): CPU seconds, address space, largest file written,
# open files, processes. Each value is a positive int or "unlimited"; a missing name takes the
# node's default.
LIMIT_NAMES = ("cpu", "as", "fsize", "nofile", "nproc")


class RestartPolicyKind(StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    policy: RestartPolicyKind = RestartPolicyKind.NEVER
    max_restarts: int = 3
    window_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RestartPolicy:
        if not data:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "policy" in values:
            values["policy"] = RestartPolicyKind(values["policy"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": str(self.policy),
            "max_restarts": self.max_restarts,
            "window_s": self.window_s,
            "backoff_s": self.backoff_s,
            "backoff_max_s": self.backoff_max_s,
        }


@dataclass(slots=True)
class Command:
    id: int
    name: str | None
    code: str
    description: str
    created_at: datetime
    timeout_s: float | None
    stuck_after_s: float | None
    restart: dict[str, Any]
    max_output_bytes: int
    env: dict[str, str | None]  # the variables a run may set -> default value (None: none)
    limits: dict[str, int | str]  # LIMIT_NAMES -> positive int or "unlimited"
    # Placement defaults of its runs: a node id, labels that must all match (placement.py).
    place_node: str | None = None
    place_labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Attempt:
    run_id: int
    attempt: int
    node: str
    pid: int | None
    pid_start_ticks: int | None
    process_marker: str
    boot_id: str | None
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    output_offset: int
    leftovers_killed: int


@dataclass(slots=True)
class Run:
    id: int
    command_id: int
    code: str
    env: dict[str, str]
    status: RunStatus
    exit_code: int | None
    signal: int | None
    reason: str | None
    node: str | None
    pid: int | None
    attempt: int
    restart_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    output_bytes: int
    output_truncated: bool
    stop_requested_by: str | None
    stop_requested_at: datetime | None
    stop_grace_s: float | None
    timeout_s: float | None
    stuck_after_s: float | None
    restart: dict[str, Any]
    max_output_bytes: int
    limits: dict[str, int | str]  # copied from the command when the run was created
    # Where it asks to run (`node` is where it runs): the command's, or the start request's.
    place_node: str | None = None
    place_labels: dict[str, str] = field(default_factory=dict)
    # Why it waits, while no live node may take it; cleared when a node claims it.
    queued_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy.from_json(self.restart)

    @property
    def current_attempt(self) -> Attempt | None:
        """The row of attempt number `attempt` in `attempts`; None if not read with the run
        (or before its first claim)."""
        return next((a for a in self.attempts if a.attempt == self.attempt), None)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A validated request to create a command (the HTTP layer builds it)."""

    code: str
    name: str | None = None
    description: str = ""
    timeout_s: float | None = None
    stuck_after_s: float | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    max_output_bytes: int | None = None  # None: the RUNVISOR_MAX_OUTPUT_BYTES default
    env: dict[str, str | None] = field(default_factory=dict)  # declared variables -> default
    limits: dict[str, int | str] = field(default_factory=dict)  # absent name: node default
    place_node: str | None = None
    place_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated request to start a run; None fields take the command's value."""

    timeout_s: float | None = None
    stuck_after_s: float | None = None
    restart: RestartPolicy | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Placement overrides; None: the command's. `place_node` "" asks for no node in particular.
    place_node: str | None = None
    place_labels: dict[str, str] | None = None
    # Whoever asked may loosen the command's bounds (an admin); else only tighten them.
    may_loosen: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit table: who (a principal or node:NAME) did what, to which command
    or run."""

    id: int
    at: datetime
    actor: str
    action: str
    command_id: int | None
    run_id: int | None
    detail: dict[str, Any]
