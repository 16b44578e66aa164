"""Settings, read once from the RUNVISOR_* environment (and overridden by `serve` flags).

`Settings` is a pydantic-settings model: each field is one RUNVISOR_<NAME> variable, its type
and its validator say what the variable may hold. Every value is validated as the text it is
given in (a variable, a flag), so the rules are the same wherever it comes from, and a refused
value becomes one `SettingsError` line that names the variable (or the flag) and why.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from runvisor.errors import SettingsError
from runvisor.placement import PlacementError, parse_labels
from runvisor.procs.limits import parse_run_limits
from runvisor.procs.uid_range import UidRange, parse_uid_range

T = TypeVar("T")

ENV_PREFIX = "RUNVISOR_"
LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
ProcessTracking = Literal["auto", "cgroup", "scan"]
OnShutdown = Literal["detach", "drain"]
ON_SHUTDOWN: tuple[OnShutdown, ...] = ("detach", "drain")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")
PROCESS_TRACKING: tuple[ProcessTracking, ...] = ("auto", "cgroup", "scan")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "runvisor"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


class _Refused(ValueError):
    """Why a value is refused. `show_value` is False where the value may hold a password."""

    def __init__(self, reason: str, *, show_value: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.show_value = show_value


# --- parsers: the text of one value -> the value, or _Refused ----------------------------


def _parse_float(raw: str, *, minimum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _Refused("not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _Refused("must be a finite number")
    if value < minimum:
        raise _Refused(f"must be >= {minimum:g}")
    return value


def _parse_int(raw: str, *, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise _Refused("not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise _Refused(f"must be >= {minimum}{upper}")
    return value


def _parse_choice(raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise _Refused(f"must be one of {', '.join(choices)}")
    return value


def _parse_url(raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip()
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise _Refused(
            f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}",
            show_value=False,
        )
    return value


def _parse_node_id(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise _Refused("1-64 characters of letters, digits, '-', '_' or '.'")
    return value


def _parse_node_labels(raw: str) -> dict[str, str]:
    try:
        return parse_labels(raw)
    except PlacementError as exc:
        raise _Refused(str(exc)) from None


def _parse_prefix(raw: str) -> str:
    value = raw.strip()
    if not value or not all(c.isalnum() or c in "-_.:" for c in value):
        raise _Refused("letters, digits, '-', '_', '.' or ':' only")
    return value


def _parse_database_url(raw: str) -> str:
    """A postgresql:// URL or a libpq "key=value" string, as psycopg accepts."""
    from psycopg.conninfo import conninfo_to_dict

    value = raw.strip()
    if "://" in value:
        return _parse_url(value, ("postgresql", "postgres"))
    try:
        conninfo_to_dict(value)
    except Exception:
        raise _Refused(
            "not a postgresql:// URL nor a libpq connection string", show_value=False
        ) from None
    return value


def _parse_run_limits(raw: str) -> dict[str, int | str]:
    try:
        return parse_run_limits(raw)
    except SettingsError as exc:  # its message names RUNVISOR_RUN_LIMITS already
        reason = str(exc).removeprefix(f"{env_name('run_limits')}: ")
        raise _Refused(reason, show_value=False) from None


def _parse_run_uids(raw: str) -> UidRange:
    try:
        return parse_uid_range(env_name("run_uids"), raw)
    except SettingsError as exc:  # "RUNVISOR_RUN_UIDS='…': why": keep the why
        raise _Refused(str(exc).split(": ", 1)[-1]) from None


def _text(parse: Callable[[str], T]) -> BeforeValidator:
    """Validate a value as the text it is given in, whichever Python type it arrives as."""

    def validate(value: object) -> object:
        if value is None:
            return None
        if isinstance(value, Mapping):  # RUNVISOR_RUN_LIMITS given as a dict in code
            value = ",".join(f"{name}={limit}" for name, limit in value.items())
        return parse(str(value))

    return BeforeValidator(validate)


def _integer(minimum: int, maximum: int | None = None) -> BeforeValidator:
    return _text(lambda raw: _parse_int(raw, minimum=minimum, maximum=maximum))


def _number(minimum: float) -> BeforeValidator:
    return _text(lambda raw: _parse_float(raw, minimum=minimum))


def _choice(choices: tuple[str, ...]) -> BeforeValidator:
    return _text(lambda raw: _parse_choice(raw, choices))


def _stripped(raw: str) -> str:
    return raw.strip()


# RUNVISOR_TOKENS="" means "no token at all" (every request that needs one is denied), not
# "unset" (which makes `serve` generate an admin token); other empty variables are unset.
EMPTY_IS_A_VALUE = object()


class Settings(BaseSettings):
    """Every setting of the service. The README's settings table lists the same names.

    `Settings(...)` validates what it is given (the defaults for the rest); `load_settings`
    reads the RUNVISOR_* environment and the `serve` flags, with one-line errors. Settings
    are read once at start-up and shared by every thread, so they never change in place.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        # The defaults are this module's own (a hostname need not be a valid node id).
        validate_default=False,
        # A refused URL or token list is never printed back.
        hide_input_in_errors=True,
    )

    # The request schemas' limit on `code` when no Settings reach them (tests, the document).
    DEFAULT_MAX_CODE_BYTES: ClassVar[int] = 64 * 1024

    database_url: Annotated[str | None, _text(_parse_database_url)] = None
    redis_url: Annotated[str | None, _text(lambda raw: _parse_url(raw, REDIS_SCHEMES))] = None
    data_dir: Annotated[Path, _text(lambda raw: Path(raw).expanduser())] = Field(
        default_factory=default_data_dir
    )
    host: Annotated[str, _text(_stripped)] = "127.0.0.1"
    port: Annotated[int, _integer(0, 65535)] = 8080
    tokens: Annotated[str | None, EMPTY_IS_A_VALUE, Field(repr=False)] = None
    flush_interval_s: Annotated[float, _number(0.01)] = 0.5
    log_format: Annotated[LogFormat, _choice(LOG_FORMATS)] = "auto"
    log_level: Annotated[LogLevel, _choice(LOG_LEVELS)] = "info"
    node_id: Annotated[str, _text(_parse_node_id)] = Field(default_factory=socket.gethostname)
    # What runs may ask of this node (`key=value,…`): placement.py.
    node_labels: Annotated[dict[str, str], _text(_parse_node_labels)] = Field(default_factory=dict)
    redis_prefix: Annotated[str, _text(_parse_prefix)] = "runvisor"
    max_running: Annotated[int, _integer(0)] = 0
    default_grace_s: Annotated[float, _number(0.0)] = 10.0
    max_body_bytes: Annotated[int, _integer(1024)] = 1024 * 1024
    # Code is one argv string of bash -c: Linux caps one argument at 128 KiB (MAX_ARG_STRLEN).
    max_code_bytes: Annotated[int, _integer(1, 131_000)] = DEFAULT_MAX_CODE_BYTES
    max_output_bytes: Annotated[int, _integer(1)] = 64 * 1024 * 1024
    max_page_limit: Annotated[int, _integer(1)] = 1000
    legacy_result_bytes: Annotated[int, _integer(1024)] = 1024 * 1024
    max_output_streams: Annotated[int, _integer(1)] = 64
    max_output_streams_per_token: Annotated[int, _integer(1)] = 16
    output_write_timeout_s: Annotated[float, _number(0.1)] = 30.0
    max_live_streams_per_token: Annotated[int, _integer(1)] = 16
    sse_heartbeat_s: Annotated[float, _number(0.1)] = 15.0
    ping_timeout_s: Annotated[float, _number(0.1)] = 10.0
    # Renewed every second (TTL/3 if shorter) by a thread of its own; a dead node's runs are
    # restarted elsewhere within the TTL + ~1 s.
    lease_ttl_s: Annotated[float, _number(2.0)] = 5.0
    # What a graceful stop (SIGTERM) does with the runs: leave them running for the next start
    # (unattended for at most detach_ttl_s), or drain (wait, then stop them after
    # drain_timeout_s, to be restarted elsewhere by policy).
    on_shutdown: Annotated[OnShutdown, _choice(ON_SHUTDOWN)] = "detach"
    detach_ttl_s: Annotated[float, _number(0.0)] = 300.0
    drain_timeout_s: Annotated[float, _number(0.0)] = 60.0
    tokens_file: Annotated[Path | None, _text(lambda raw: Path(raw.strip()).expanduser())] = None
    # Resolved at start-up (runvisor.procs.run_user).
    run_as: Annotated[str | None, _text(_stripped)] = None
    run_limits: Annotated[dict[str, int | str], _text(_parse_run_limits)] = Field(
        default_factory=dict
    )
    process_tracking: Annotated[ProcessTracking, _choice(PROCESS_TRACKING)] = "auto"
    # One uid per attempt from this range; checked against the machine at start-up.
    run_uids: Annotated[UidRange | None, _text(_parse_run_uids)] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # What it is given, nothing else: load_settings reads the environment (RUNVISOR_*
        # variables by our rules, no .env file, no secrets dir), so that Settings(...) in
        # code and tests never depends on the variables of the process it runs in.
        return (init_settings,)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Settings are read-only: {name} cannot be set")

    @property
    def spool_dir(self) -> Path:
        """Output and exit-status files of the attempts, one directory per run."""
        return self.data_dir / "spool"

    @property
    def work_dir(self) -> Path:
        """The working directory of each run (one per run, removed when the run ends)."""
        return self.data_dir / "work"


class RunvisorEnvironment(PydanticBaseSettingsSource):
    """The RUNVISOR_<FIELD> variables of one environment, as text, by their exact names.

    An empty variable counts as unset, except for a field marked EMPTY_IS_A_VALUE. Values are
    passed on as they are: the fields' validators parse them (no JSON decoding).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raw = self.environ.get(env_name(field_name))
        if raw == "" and EMPTY_IS_A_VALUE not in field.metadata:
            raw = None
        return raw, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            raw, key, _complex = self.get_field_value(field, field_name)
            if raw is not None:
                values[key] = raw
        return values


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read Settings from RUNVISOR_* variables; `overrides` (CLI flags) win when not None.

    Raises SettingsError naming the first bad setting. A bad variable is an error even when
    a flag overrides it: it would come back as soon as the flag is dropped.
    """
    environ = os.environ if environ is None else environ
    from_env: dict[str, str] = RunvisorEnvironment(Settings, environ)()
    names = {field: env_name(field) for field in from_env}
    settings = _validated(from_env, names)
    flags: dict[str, str] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in Settings.model_fields:
            raise TypeError(f"unknown setting {name}")
        flags[name] = str(value)
    if not flags:
        return settings
    return _validated({**from_env, **flags}, {**names, **{f: flag_name(f) for f in flags}})


def _validated(given: Mapping[str, str], names: Mapping[str, str]) -> Settings:
    """Settings from exactly `given` (field -> text); `names` says where each came from."""
    try:
        return Settings.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = names.get(field, env_name(field))
        refused = first.get("ctx", {}).get("error")
        if isinstance(refused, _Refused):
            if refused.show_value:
                raise SettingsError(f"{name}={given[field]!r}: {refused.reason}") from None
            raise SettingsError(f"{name}: {refused.reason}") from None
        raise SettingsError(f"{name}: {first['msg']}") from None
