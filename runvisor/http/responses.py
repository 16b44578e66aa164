"""Every JSON response body, as a pydantic model that both builds the body and documents it.

A handler sends `Model.of(record).to_json()`; openapi.py generates the document's response
schemas from the same classes, so the JSON and the document cannot drift apart. Each model
declares its fields in the order they are sent and refuses any other field. Class names are the
schema names of the document (`Command`, `Run`, ...); the records they show are `models.*`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from runvisor import models
from runvisor.errors import RunvisorError
from runvisor.http.auth import Role
from runvisor.http.request_models import LimitValue
from runvisor.models import LIMIT_NAMES, RestartPolicyKind, RunStatus


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a "Z" and always six fractional digits (one fixed width)."""
    if value.tzinfo is None:  # the store gives aware datetimes; a naive one is taken as UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# pydantic's own format drops the fraction when it is zero: one fixed width instead.
Timestamp = Annotated[
    datetime,
    PlainSerializer(timestamp, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
# `X | LeftOut = left_out_when_none()`: a field that is absent rather than null.
LeftOut = SkipJsonSchema[None]


def _is_none(value: object) -> bool:
    return value is None


def left_out_when_none(description: str | None = None, *, alias: str | None = None) -> Any:
    """A field the JSON leaves out when it is None, and the document never shows as null."""
    return Field(None, exclude_if=_is_none, description=description, alias=alias)


class ResponseModel(BaseModel):
    """A response body. Built from trusted records, so validation only checks their types."""

    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)

    def to_json(self) -> dict[str, Any]:
        """The body as json.dumps takes it: fields in declared order, timestamps as text."""
        return self.model_dump(mode="json", by_alias=True)


# ---- v1 -----------------------------------------------------------------------------------


class RestartPolicy(ResponseModel):
    policy: RestartPolicyKind
    max_restarts: int
    window_s: float
    backoff_s: float
    backoff_max_s: float

    @classmethod
    def of(cls, stored: dict[str, Any]) -> RestartPolicy:
        # The row may hold a partial policy ({"policy": "never"} by default): show every field.
        return cls.model_validate(models.RestartPolicy.from_json(stored))


class Placement(ResponseModel):
    """Where a run asks to run: its command's placement, or the start request's."""

    node: Annotated[str | None, Field(description="only this node may take it; null: any")]
    labels: Annotated[dict[str, str], Field(description="labels a node must all have")]


class Limits(ResponseModel):
    """Resource limits of the runs; a name left out takes the node's default."""

    cpu: LimitValue | LeftOut = left_out_when_none("CPU time, seconds")
    as_: LimitValue | LeftOut = left_out_when_none("address space, bytes", alias="as")
    fsize: LimitValue | LeftOut = left_out_when_none("largest file a run may write, bytes")
    nofile: LimitValue | LeftOut = left_out_when_none("open files")
    nproc: LimitValue | LeftOut = left_out_when_none("processes")

    @classmethod
    def of(cls, stored: dict[str, int | str]) -> Limits:
        # jsonb keeps keys in its own order; the JSON shows them in LIMIT_NAMES order.
        return cls.model_validate({name: stored[name] for name in LIMIT_NAMES if name in stored})


class Command(ResponseModel):
    id: int
    name: str | None
    code: str
    description: str
    created_at: Timestamp
    timeout_s: float | None
    stuck_after_s: float | None
    restart: RestartPolicy
    max_output_bytes: int
    env: Annotated[
        dict[str, str | None],
        Field(
            description="the variables a run may set, each with its default value or null (none)"
        ),
    ]
    limits: Limits
    node: Annotated[str | None, Field(description="its runs run only on this node; null: any")]
    labels: Annotated[dict[str, str], Field(description="labels a node must have for its runs")]

    @classmethod
    def of(cls, c: models.Command) -> Command:
        return cls(
            id=c.id,
            name=c.name,
            code=c.code,
            description=c.description,
            created_at=c.created_at,
            timeout_s=c.timeout_s,
            stuck_after_s=c.stuck_after_s,
            restart=RestartPolicy.of(c.restart),
            max_output_bytes=c.max_output_bytes,
            # Defaults are set by an admin and are not secrets (unlike a run's values).
            env=dict(sorted(c.env.items())),
            limits=Limits.of(c.limits),
            node=c.place_node,
            labels=dict(sorted(c.place_labels.items())),
        )


Signal = Annotated[int | None, Field(description="the terminating signal's number")]


class Attempt(ResponseModel):
    attempt: int
    node: str
    pid: int | None
    started_at: Timestamp
    finished_at: Timestamp | None
    exit_code: int | None
    signal: Signal
    reason: str | None
    output_offset: Annotated[int, Field(description="where this attempt's output begins")]
    leftovers_killed: Annotated[
        int, Field(description="processes still running when the attempt ended, killed then")
    ]

    @classmethod
    def of(cls, a: models.Attempt) -> Attempt:
        # Reads the fields above only: process_marker and pid_start_ticks identify processes
        # for adoption and stay internal.
        return cls.model_validate(a)


class Run(ResponseModel):
    id: int
    command_id: int
    status: RunStatus
    exit_code: int | None
    signal: Signal
    reason: str | None
    node: str | None
    pid: int | None
    attempt: int
    restart_count: int
    next_attempt_at: Timestamp | None
    attempts: list[Attempt]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    output_bytes: int
    output_truncated: bool
    stop_requested_by: Annotated[
        str | None, Field(description="a principal, e.g. operator:1a2b3c4d")
    ]
    stop_requested_at: Timestamp | None
    code: str
    timeout_s: float | None
    stuck_after_s: float | None
    restart: RestartPolicy
    max_output_bytes: int
    limits: Limits
    env_keys: Annotated[list[str], Field(description="names only: values stay secret")]
    placement: Annotated[
        Placement, Field(description="where it asks to run (`node` is where it runs)")
    ]
    queued_reason: Annotated[
        str | None, Field(description="while queued: why no node that is up may take it")
    ]

    @classmethod
    def of(cls, r: models.Run) -> Run:
        return cls(
            id=r.id,
            command_id=r.command_id,
            status=r.status,
            exit_code=r.exit_code,
            signal=r.signal,
            reason=r.reason,
            node=r.node,
            pid=r.pid,
            attempt=r.attempt,
            restart_count=r.restart_count,
            next_attempt_at=r.next_attempt_at,
            attempts=[Attempt.of(a) for a in sorted(r.attempts, key=lambda a: a.attempt)],
            created_at=r.created_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            output_bytes=r.output_bytes,
            output_truncated=r.output_truncated,
            stop_requested_by=r.stop_requested_by,
            stop_requested_at=r.stop_requested_at,
            code=r.code,
            timeout_s=r.timeout_s,
            stuck_after_s=r.stuck_after_s,
            restart=RestartPolicy.of(r.restart),
            max_output_bytes=r.max_output_bytes,
            limits=Limits.of(r.limits),
            # Values may be secrets (API keys handed to a script): only the names are shown.
            env_keys=sorted(r.env),
            placement=Placement(node=r.place_node, labels=dict(sorted(r.place_labels.items()))),
            queued_reason=r.queued_reason,
        )


RoleLabel = Literal["viewer", "operator", "admin"]  # the Role labels (a test keeps them equal)
_TOKEN_ROLES = frozenset(r.label for r in Role)
_FINGERPRINT = re.compile(r"[0-9a-f]{8}")


class AuditEntry(ResponseModel):
    id: int
    at: Timestamp
    actor: Annotated[str, Field(description="a principal (role:fingerprint) or node:NAME")]
    role: Annotated[RoleLabel | None, Field(description="the token's role; null for a node")]
    token_fingerprint: Annotated[
        str | None, Field(description="first 8 hex digits of the token's SHA-256")
    ]
    node: Annotated[
        str | None, Field(description="the node that acted (actor node:NAME), else null")
    ]
    action: Annotated[
        str, Field(description="e.g. command.create, run.create, run.stop, run.failed")
    ]
    command_id: int | None
    run_id: int | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: models.AuditEntry) -> AuditEntry:
        """An audit row; its actor ("admin:ed626e10" or "node:NAME") is also shown in parts."""
        prefix, _, rest = e.actor.partition(":")
        token = prefix in _TOKEN_ROLES and _FINGERPRINT.fullmatch(rest) is not None
        return cls(
            id=e.id,
            at=e.at,
            actor=e.actor,
            role=cast(RoleLabel, prefix) if token else None,
            token_fingerprint=rest if token else None,
            node=rest if prefix == "node" and rest else None,
            action=e.action,
            command_id=e.command_id,
            run_id=e.run_id,
            detail=e.detail,
        )


Item = TypeVar("Item", bound=ResponseModel)


class Page(ResponseModel, Generic[Item]):
    items: list[Item]
    limit: int
    offset: int
    total: int


class CommandPage(Page[Command]):
    pass


class RunPage(Page[Run]):
    pass


class AuditEntryPage(Page[AuditEntry]):
    pass


# ---- open routes --------------------------------------------------------------------------


class Health(ResponseModel):
    status: Literal["ok"]


class UidsInUse(ResponseModel):
    first: int
    last: int
    in_use: int


class Isolation(ResponseModel):
    """Who runs execute as on this node, and how their processes are tracked."""

    user: Annotated[
        str | None,
        Field(
            description="the user runs execute as (RUNVISOR_RUN_AS); null when each attempt "
            "has a uid of its own"
        ),
    ]
    uid: int | None
    gid: int | None
    uids: Annotated[
        UidsInUse | None,
        Field(
            description="RUNVISOR_RUN_UIDS: the range each attempt gets a uid of its own "
            "from, and how many of it attempts hold now; else null"
        ),
    ]
    process_tracking: Annotated[
        Literal["cgroup", "scan"],
        Field(description="cgroup: one cgroup v2 per attempt; scan: /proc scans"),
    ]
    cgroup: Annotated[str | None, Field(description="this node's cgroup dir")]
    cgroup_controllers: list[str]
    no_cgroup_reason: str | None


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    stores: Annotated[
        dict[str, str], Field(description='each store (postgres, redis): "ok", or "down: why"')
    ]
    runs: Isolation


# ---- errors -------------------------------------------------------------------------------


class ErrorDetail(ResponseModel):
    field: str
    message: str
    type: str


class ErrorBody(ResponseModel):
    code: str
    message: str
    details: list[ErrorDetail] | LeftOut = left_out_when_none("each field that is not valid")


class Error(ResponseModel):
    """An error of the v1 API (the legacy routes answer with LegacyError)."""

    error: ErrorBody

    @classmethod
    def of(cls, exc: RunvisorError) -> Error:
        details: list[dict[str, str]] | None = getattr(exc, "details", None)
        return cls(
            error=ErrorBody(
                code=exc.code,
                message=exc.message,
                details=None if details is None else [ErrorDetail(**d) for d in details],
            )
        )


class LegacyError(ResponseModel):
    error: str

    @classmethod
    def of(cls, exc: RunvisorError) -> LegacyError:
        return cls(error=exc.message)


class ServerSentEvent(BaseModel):
    """One event of GET /api/v1/runs/{id}/events (the text/event-stream answer's schema)."""

    event: Literal["status", "output", "end"]
    data: str  # status, end: the run as JSON; output: one JSON string, the text
    id: str  # the byte offset after the output given so far
