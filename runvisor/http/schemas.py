"""Request bodies and query parameters: decoding and validation (pure: no I/O).

Models are strict (no "5" -> 5, no true -> 1) and forbid unknown fields, so a typo in a
field name is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from runvisor.config import Settings
from runvisor.env_names import forbidden_pattern, forbidden_reason
from runvisor.errors import BadRequest, NotFound, Unprocessable, UnsupportedMediaType
from runvisor.http.auth import Role
from runvisor.models import (
    ACTIVE_STATUSES,
    LIMIT_NAMES,
    TERMINAL_STATUSES,
    CommandSpec,
    RestartPolicy,
    RestartPolicyKind,
    RunSpec,
    RunStatus,
)

M = TypeVar("M", bound=BaseModel)

MAX_ID = 2**63 - 1  # PostgreSQL bigint
MAX_SECONDS = 31_536_000  # one year
DEFAULT_PAGE_LIMIT = 50  # v1 lists without ?limit=
LEGACY_PAGE_LIMIT = 10  # the original's default for GET /commands
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_ENV_VARIABLES = 100
MAX_LIMIT = 2**62  # a resource limit's largest number (RLIM_INFINITY is 2^64 - 1)
_DEFAULT_MAX_CODE_BYTES = cast(int, Settings.__dataclass_fields__["max_code_bytes"].default)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²" and "٣"


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
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


class _NameRefused(ValueError):
    """A variable name that matches the pattern but may never be set: reported as is."""


def _env_name(name: str) -> str:
    # RUNVISOR_* is ours (RUNVISOR_RUN_ID, the attempt marker): a run must not forge them.
    if name.startswith("RUNVISOR_"):
        raise ValueError("the RUNVISOR_ prefix is reserved")
    reason = forbidden_reason(name)
    if reason is not None:
        raise _NameRefused(f"{reason}; not allowed")
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
        )


class RunIn(BaseModel):
    model_config = _STRICT

    timeout_s: Seconds | None = None
    stuck_after_s: Seconds | None = None
    restart: RestartIn | None = None
    env: Env | None = None

    def to_spec(self) -> RunSpec:
        return RunSpec(
            timeout_s=self.timeout_s,
            stuck_after_s=self.stuck_after_s,
            restart=self.restart.to_policy() if self.restart else None,
            env=dict(self.env or {}),
        )


class StopIn(BaseModel):
    model_config = _STRICT

    grace_s: Annotated[float, Field(ge=0, le=3600)] | None = None


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


# ---- bodies -------------------------------------------------------------------------------


class _Invalid(ValueError):
    """A JSON problem found by a parser hook."""


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "code" keys would mean different things to different parsers: refuse to guess.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Invalid(f"duplicate key {_short(key)!r}")
        out[key] = value
    return out


def _check_unicode(value: Any) -> None:
    # json.loads turns "\ud800" into a lone surrogate, which no database or encoder accepts.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Invalid("a string contains an unpaired \\u surrogate escape") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def is_json_media_type(content_type: str | None) -> bool:
    """application/json or any type/subtype+json, parameters (charset) ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if media == "application/json":
        return True
    return bool(kind) and subtype.endswith("+json") and len(subtype) > len("+json")


def decode_json_body(
    raw: bytes, content_type: str | None, *, required: bool, check_media_type: bool = True
) -> dict[str, Any] | None:
    """Decode a request body into a JSON object; None when it is empty and not required.

    `check_media_type=False` skips the Content-Type check (the legacy routes' original
    ignored it). Raises BadRequest or UnsupportedMediaType.
    """
    if not raw.strip():
        if required:
            raise BadRequest("a JSON request body is required", code="missing_body")
        return None
    if check_media_type and not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {_short(content_type or 'none')!r}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"not UTF-8 at byte {exc.start}"
        raise BadRequest(f"invalid JSON: {where}", code="invalid_json") from None
    text = text.removeprefix("\ufeff")  # RFC 8259 lets a parser ignore a byte order mark
    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
        _check_unicode(data)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            code="invalid_json",
        ) from None
    except ValueError as exc:  # our hooks, and int() over the digit limit
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"the body must be a JSON object, not {_json_kind(data)}", code="not_an_object"
        )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---- validation errors --------------------------------------------------------------------

_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "finite_number": "must be a finite number",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "string_too_short": "must have at least {min_length} characters",
    "string_too_long": "must have at most {max_length} characters",
    "too_long": "must have at most {max_length} entries",
    "literal_error": "must be one of {expected}",
}


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, worded for an API user."""
    loc = [str(part) for part in error["loc"]]
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc.pop()
    path = ".".join(_short(part) if part else '""' for part in loc) or "body"
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind == "string_pattern_mismatch" and is_key:
        message = "invalid variable name: must match [A-Za-z_][A-Za-z0-9_]*"
    elif kind == "string_pattern_mismatch":
        message = f"must match {ctx.get('pattern')}"
    elif kind in _MESSAGES:
        message = _MESSAGES[kind].format(**ctx)
    else:
        message = error["msg"]
    if (
        is_key
        and kind != "string_pattern_mismatch"
        and not isinstance(ctx.get("error"), _NameRefused)
    ):
        message = f"invalid variable name: {message}"
    return path, message


def validate(model_cls: type[M], data: Mapping[str, Any], *, context: Mapping[str, Any]) -> M:
    """Validate `data` into `model_cls`; raises Unprocessable naming every failing field.

    The exception carries `.details`: [{"field", "message", "type"}], for error.details.
    """
    try:
        return model_cls.model_validate(data, context=dict(context))
    except ValidationError as exc:
        details = []
        for error in exc.errors(include_url=False, include_input=False):
            path, message = _describe(error)
            details.append({"field": path, "message": message, "type": error["type"]})
        shown = "; ".join(f"{d['field']}: {d['message']}" for d in details[:20])
        if len(details) > 20:
            shown += f"; and {len(details) - 20} more"
        problem = Unprocessable(shown or "invalid request body")
        problem.details = details  # type: ignore[attr-defined]  # read by the error middleware
        raise problem from None


# ---- query and path parameters ------------------------------------------------------------


def _int_within(raw: str, minimum: int, maximum: int) -> int | None:
    """`raw` as an int if it is ASCII digits within bounds, else None."""
    # Leading zeros go first, then the length check: int() refuses over 4300 digits (and is
    # slow on a long string before it does), so "000…01" must reach it as "1".
    digits = raw.lstrip("0") or "0"
    if not _DIGITS.fullmatch(raw) or len(digits) > 19:
        return None
    value = int(digits)
    return value if minimum <= value <= maximum else None


def parse_int_param(
    query: Mapping[str, str], name: str, *, default: int | None, minimum: int, maximum: int = MAX_ID
) -> int | None:
    """An integer query parameter: ASCII digits only, within bounds; absent or empty -> default."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value = _int_within(raw, minimum, maximum)
    if value is None:
        raise BadRequest(
            f"{name}: must be an integer from {minimum} to {maximum}", code="invalid_parameter"
        )
    return value


def parse_pagination(
    query: Mapping[str, str], *, default_limit: int, max_limit: int
) -> tuple[int, int]:
    """(limit, offset) from ?limit=&offset= ; offset counts rows, not pages."""
    limit = parse_int_param(
        query, "limit", default=min(default_limit, max_limit), minimum=1, maximum=max_limit
    )
    offset = parse_int_param(query, "offset", default=0, minimum=0)
    assert limit is not None and offset is not None
    return limit, offset


def parse_id(raw: str, what: str) -> int:
    """A path id. Not digits -> BadRequest; 0 or beyond bigint -> NotFound (it cannot exist)."""
    if not _DIGITS.fullmatch(raw):
        raise BadRequest(
            f"{what} id must be a positive integer, not {_short(raw)!r}", code="invalid_id"
        )
    value = _int_within(raw, 1, MAX_ID)
    if value is None:
        raise NotFound(f"{what} {_short(raw)} not found")
    return value


_STATUS_ALIASES = {"active": ACTIVE_STATUSES, "terminal": TERMINAL_STATUSES}


def parse_status_filter(query: Mapping[str, str]) -> tuple[RunStatus, ...] | None:
    """?status=running,queued (or `active`, `terminal`) -> statuses in enum order; None = all."""
    raw = query.get("status")
    if raw is None or not raw.strip():
        return None
    chosen: set[RunStatus] = set()
    for part in raw.split(","):
        word = part.strip().lower()
        if word in _STATUS_ALIASES:
            chosen |= _STATUS_ALIASES[word]
        elif word in RunStatus.__members__.values():
            chosen.add(RunStatus(word))
        else:
            allowed = ", ".join([*RunStatus, *_STATUS_ALIASES])
            raise BadRequest(
                f"status: {_short(part.strip())!r} is not one of {allowed}",
                code="invalid_parameter",
            )
    return tuple(s for s in RunStatus if s in chosen)


MAX_FILTER_CHARS = 200  # the longest text filter (?action=, ?actor=)
AUDIT_ROLES = (*(r.label for r in Role), "node")  # ?role= of GET /api/v1/audit


def parse_text_param(query: Mapping[str, str], name: str) -> str | None:
    """A text filter, matched exactly: at most MAX_FILTER_CHARS, no control characters (a NUL
    cannot even reach PostgreSQL), valid Unicode; absent or empty -> None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_FILTER_CHARS or _CONTROL.search(raw) or not _encodable(raw):
        raise BadRequest(
            f"{name}: must be at most {MAX_FILTER_CHARS} characters, none of them a control"
            " character",
            code="invalid_parameter",
        )
    return raw


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def parse_choice_param(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices` (letter case ignored); absent or empty -> None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if value not in choices:
        raise BadRequest(
            f"{name}: {_short(raw)!r} is not one of {', '.join(choices)}",
            code="invalid_parameter",
        )
    return value


def parse_output_range(query: Mapping[str, str]) -> tuple[int, int | None]:
    """(offset, limit) in bytes for GET .../output; limit None = to the end."""
    offset = parse_int_param(query, "offset", default=0, minimum=0)
    limit = parse_int_param(query, "limit", default=None, minimum=1)
    assert offset is not None
    return offset, limit
