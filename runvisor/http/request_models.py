"""Request bodies as strict models (pure: no I/O): what each route accepts, and its limits.

Models are strict (no "5" -> 5, no true -> 1) and forbid unknown fields, so a typo in a
field name is an error instead of a silently ignored setting. Decoding a body is in bodies.py,
the wording of validation errors in validation.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from runvisor.config import Settings
from runvisor.env_names import forbidden_pattern, forbidden_reason
from runvisor.http.validation import NameRefused
from runvisor.models import (
    LIMIT_NAMES,
    CommandSpec,
    RestartPolicy,
    RestartPolicyKind,
    RunSpec,
)
from runvisor.placement import (
    LABEL_PATTERN,
    MAX_LABELS,
    NODE_ID_PATTERN,
    check_label,
    check_node_id,
)

MAX_SECONDS = 31_536_000  # one year
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_ENV_VARIABLES = 100
MAX_LIMIT = 2**62  # a resource limit's largest number (RLIM_INFINITY is 2^64 - 1)
_DEFAULT_MAX_CODE_BYTES: int = Settings.DEFAULT_MAX_CODE_BYTES
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and bash would cut the string there anyway.
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


def _check_code(value: str, info: ValidationInfo) -> str:
    _no_nul(value)
    if not value.strip():
        raise ValueError("must not be blank")
    limit = (info.context or {}).get("max_code_bytes", _DEFAULT_MAX_CODE_BYTES)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"must be at most {limit} bytes of UTF-8 (got {size})")
    return value


def _no_control(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


def _env_name(name: str) -> str:
    # RUNVISOR_* is ours (RUNVISOR_RUN_ID, the attempt marker): a run must not forge them.
    if name.startswith("RUNVISOR_"):
        raise ValueError("the RUNVISOR_ prefix is reserved")
    reason = forbidden_reason(name)
    if reason is not None:
        raise NameRefused(f"{reason}; not allowed")
    return name


def _env_value(value: str) -> str:
    _no_nul(value)
    if len(value.encode("utf-8", "surrogatepass")) > 32 * 1024:
        raise ValueError("must be at most 32768 bytes of UTF-8")
    return value


_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
Code = Annotated[
    str,
    Field(
        description="bash code, run as `bash -c CODE`; not blank, no NUL, "
        "at most RUNVISOR_MAX_CODE_BYTES bytes of UTF-8"
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_control)]
Description = Annotated[str, Field(max_length=10_000), AfterValidator(_no_nul)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN), AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_env_value)]
# patternProperties alone would let other names through; propertyNames documents the rule.
_ENV_SCHEMA: dict[str, Any] = {
    "propertyNames": {
        "pattern": ENV_NAME_PATTERN,
        "not": {"pattern": "^RUNVISOR_|" + forbidden_pattern()},
    }
}
Env = Annotated[
    dict[EnvName, EnvValue],
    Field(
        max_length=MAX_ENV_VARIABLES,
        json_schema_extra=_ENV_SCHEMA,
        description="variables to set; each must be declared by the command",
    ),
]
EnvDeclaration = Annotated[
    dict[EnvName, EnvValue | None],
    Field(
        max_length=MAX_ENV_VARIABLES,
        json_schema_extra=_ENV_SCHEMA,
        description="the variables a run may set, each with its default value or null (none)",
    ),
]


def _limit_value(value: Any) -> int | str:
    # One plain check instead of a union: a union would report one error per member.
    if value == "unlimited":
        return "unlimited"
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError('must be a positive integer or "unlimited"')
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f'must be from 1 to 2^62 ({MAX_LIMIT}), or "unlimited"')
    return value


LIMIT_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, {"const": "unlimited"}]
}
LimitValue = Annotated[int | str, PlainValidator(_limit_value), WithJsonSchema(LIMIT_SCHEMA)]


# Placement (placement.py): a node id as RUNVISOR_NODE_ID, labels as RUNVISOR_NODE_LABELS.
# Checked by placement.py's own functions, so that a 422 words it as the settings do.
NodeId = Annotated[
    str,
    AfterValidator(check_node_id),
    WithJsonSchema({"type": "string", "pattern": NODE_ID_PATTERN}),
    Field(description="a node's id (RUNVISOR_NODE_ID): run only there"),
]
LabelKey = Annotated[
    str,
    AfterValidator(lambda text: check_label("key", text)),
    WithJsonSchema({"type": "string", "pattern": LABEL_PATTERN}),
]
LabelValue = Annotated[
    str,
    AfterValidator(lambda text: check_label("value", text)),
    WithJsonSchema({"type": "string", "pattern": LABEL_PATTERN}),
]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(
        max_length=MAX_LABELS,
        json_schema_extra={"propertyNames": {"pattern": LABEL_PATTERN}},
        description="labels a node must all have (RUNVISOR_NODE_LABELS) to take the run",
    ),
]


class RestartIn(BaseModel):
    model_config = _STRICT

    policy: Literal["never", "on-failure", "always"]
    max_restarts: int = Field(3, ge=0, le=1000, description="restarts allowed within window_s")
    window_s: float = Field(60.0, gt=0, le=86_400)
    backoff_s: float = Field(1.0, ge=0, le=3600, description="first restart delay")
    backoff_max_s: float = Field(
        60.0, ge=0, le=86_400, description="cap of the delay; must be >= backoff_s"
    )

    @field_validator("backoff_max_s")
    @classmethod
    def _cap_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        # info.data lacks backoff_s when that field itself failed: then it reports alone.
        base = info.data.get("backoff_s")
        if base is not None and value < base:
            raise ValueError(f"must be >= backoff_s ({base:g})")
        return value

    def to_policy(self) -> RestartPolicy:
        return RestartPolicy(
            policy=RestartPolicyKind(self.policy),
            max_restarts=self.max_restarts,
            window_s=float(self.window_s),
            backoff_s=float(self.backoff_s),
            backoff_max_s=float(self.backoff_max_s),
        )


class LimitsIn(BaseModel):
    """Resource limits of the command's runs; a key left out (or null) takes the node's default."""

    model_config = _STRICT

    cpu: LimitValue | None = Field(None, description="CPU time, seconds")
    as_: LimitValue | None = Field(None, alias="as", description="address space, bytes")
    fsize: LimitValue | None = Field(None, description="largest file a run may write, bytes")
    nofile: LimitValue | None = Field(None, description="open files")
    nproc: LimitValue | None = Field(None, description="processes")

    def to_limits(self) -> dict[str, int | str]:
        values = self.model_dump(by_alias=True)
        return {name: values[name] for name in LIMIT_NAMES if values[name] is not None}


class CommandIn(BaseModel):
    model_config = _STRICT

    code: Code
    name: Name | None = None
    description: Description = ""
    timeout_s: Seconds | None = None
    stuck_after_s: Seconds | None = None
    restart: RestartIn | None = None
    max_output_bytes: Annotated[int, Field(ge=1, le=2**40)] | None = None
    env: EnvDeclaration | None = None
    limits: LimitsIn | None = None
    node: NodeId | None = None
    labels: Labels | None = None

    _code = field_validator("code")(_check_code)

    def to_spec(self) -> CommandSpec:
        return CommandSpec(
            code=self.code,
            name=self.name,
            description=self.description,
            timeout_s=self.timeout_s,
            stuck_after_s=self.stuck_after_s,
            restart=self.restart.to_policy() if self.restart else RestartPolicy(),
            max_output_bytes=self.max_output_bytes,
            env=dict(self.env or {}),
            limits=self.limits.to_limits() if self.limits else {},
            place_node=self.node,
            place_labels=dict(self.labels or {}),
        )


class RunIn(BaseModel):
    model_config = _STRICT

    timeout_s: Seconds | None = None
    stuck_after_s: Seconds | None = None
    restart: RestartIn | None = None
    env: Env | None = None
    node: Annotated[
        NodeId | None,
        Field(description="run only on this node; null: on any (overrides the command's)"),
    ] = None
    labels: Annotated[
        Labels | None,
        Field(description="labels a node must all have; {}: none (overrides the command's)"),
    ] = None

    def to_spec(self) -> RunSpec:
        given = self.model_fields_set
        return RunSpec(
            timeout_s=self.timeout_s,
            stuck_after_s=self.stuck_after_s,
            restart=self.restart.to_policy() if self.restart else None,
            env=dict(self.env or {}),
            # Left out: the command's. Given (even null or {}): replaces the command's.
            place_node=(self.node or "") if "node" in given else None,
            place_labels=dict(self.labels or {}) if "labels" in given else None,
        )


class StopIn(BaseModel):
    model_config = _STRICT

    grace_s: Annotated[float, Field(ge=0, le=3600)] | None = None


class DrainIn(BaseModel):
    model_config = _STRICT

    deadline_s: (
        Annotated[
            float,
            Field(
                ge=0,
                le=7 * 24 * 3600,
                description="seconds after which the node stops what still runs (to be restarted "
                "elsewhere by policy); absent or null: its runs may finish, however long they take",
            ),
        ]
        | None
    ) = None


class LegacyCommandIn(BaseModel):
    """The original's `{"code", "description"}`; unknown fields rejected, as it does."""

    model_config = _STRICT

    code: Code
    description: Description = ""

    _code = field_validator("code")(_check_code)

    @model_validator(mode="before")
    @classmethod
    def _go_style(cls, data: Any) -> Any:
        # Go's encoding/json matches field names case-insensitively and reads null into a
        # string as "": accept what the original accepted.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in list(out):
            canonical = key.lower()
            if canonical in ("code", "description") and key != canonical and canonical not in out:
                out[canonical] = out.pop(key)
        if out.get("description", "") is None:
            out["description"] = ""
        return out

    def to_spec(self) -> CommandSpec:
        return CommandSpec(code=self.code, description=self.description)
