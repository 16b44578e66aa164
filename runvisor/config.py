"""Settings, read once from the RUNVISOR_* environment (and overridden by `serve` flags)."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runvisor.actors.limits import parse_run_limits
from runvisor.errors import SettingsError

T = TypeVar("T")

LOG_FORMATS = ("auto", "console", "json")
PROCESS_TRACKING = ("auto", "cgroup", "scan")
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "runvisor"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the service. The README's settings table lists the same names."""

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: str | None = None
    flush_interval_s: float = 0.5
    log_format: str = "auto"
    log_level: str = "info"
    node_id: str = dataclasses.field(default_factory=socket.gethostname)
    redis_prefix: str = "runvisor"
    max_running: int = 0
    default_grace_s: float = 10.0
    max_body_bytes: int = 1024 * 1024
    max_code_bytes: int = 64 * 1024
    max_output_bytes: int = 64 * 1024 * 1024
    max_page_limit: int = 1000
    legacy_result_bytes: int = 1024 * 1024
    max_output_streams: int = 64
    max_output_streams_per_token: int = 16
    output_write_timeout_s: float = 30.0
    ping_timeout_s: float = 10.0
    lease_ttl_s: float = 15.0
    test_hooks: bool = False
    tokens_file: Path | None = None
    run_as: str | None = None  # resolved at start-up (runvisor.actors.run_user)
    run_limits: dict[str, int | str] = dataclasses.field(default_factory=dict)
    process_tracking: str = "auto"

    @property
    def spool_dir(self) -> Path:
        """Output and exit-status files of the attempts, one directory per run."""
        return self.data_dir / "spool"

    @property
    def work_dir(self) -> Path:
        """The working directory of each run (one per run, removed when the run ends)."""
        return self.data_dir / "work"


def _parse_float(name: str, raw: str, *, minimum: float = 0.0, exclusive: bool = True) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{name}={raw!r}: must be a finite number")
    if value < minimum or (exclusive and value == minimum):
        op = ">" if exclusive else ">="
        raise SettingsError(f"{name}={raw!r}: must be {op} {minimum:g}")
    return value


def _parse_int(name: str, raw: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise SettingsError(f"{name}={raw!r}: must be >= {minimum}{upper}")
    return value


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(f"{name}={raw!r}: must be one of {', '.join(choices)}")
        return value

    return parse


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r}: must be true or false")


def _parse_url(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise SettingsError(
                f"{name}: must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return value

    return parse


def _parse_node_id(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise SettingsError(f"{name}={raw!r}: 1-64 characters of letters, digits, '-', '_' or '.'")
    return value


def _parse_prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or not all(c.isalnum() or c in "-_.:" for c in value):
        raise SettingsError(f"{name}={raw!r}: letters, digits, '-', '_', '.' or ':' only")
    return value


def _parse_database_url(name: str, raw: str) -> str:
    """A postgresql:// URL or a libpq "key=value" string, as psycopg accepts."""
    from psycopg.conninfo import conninfo_to_dict

    value = raw.strip()
    if "://" in value:
        return _parse_url(("postgresql", "postgres"))(name, value)
    try:
        conninfo_to_dict(value)
    except Exception:
        raise SettingsError(
            f"{name}: not a postgresql:// URL nor a libpq connection string"
        ) from None
    return value


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "database_url": _parse_database_url,
    "redis_url": _parse_url(("redis", "rediss", "unix")),
    "data_dir": lambda _name, raw: Path(raw).expanduser(),
    "host": lambda _name, raw: raw.strip(),
    "port": lambda name, raw: _parse_int(name, raw, minimum=0, maximum=65535),
    "tokens": lambda _name, raw: raw,
    "flush_interval_s": lambda name, raw: _parse_float(name, raw, minimum=0.01, exclusive=False),
    "log_format": _parse_choice(LOG_FORMATS),
    "log_level": _parse_choice(LOG_LEVELS),
    "node_id": _parse_node_id,
    "redis_prefix": _parse_prefix,
    "max_running": lambda name, raw: _parse_int(name, raw, minimum=0),
    "default_grace_s": lambda name, raw: _parse_float(name, raw, minimum=0.0, exclusive=False),
    "max_body_bytes": lambda name, raw: _parse_int(name, raw, minimum=1024),
    # Code is one argv string of bash -c: Linux caps one argument at 128 KiB (MAX_ARG_STRLEN).
    "max_code_bytes": lambda name, raw: _parse_int(name, raw, minimum=1, maximum=131_000),
    "max_output_bytes": lambda name, raw: _parse_int(name, raw, minimum=1),
    "max_page_limit": lambda name, raw: _parse_int(name, raw, minimum=1),
    "legacy_result_bytes": lambda name, raw: _parse_int(name, raw, minimum=1024),
    "max_output_streams": lambda name, raw: _parse_int(name, raw, minimum=1),
    "max_output_streams_per_token": lambda name, raw: _parse_int(name, raw, minimum=1),
    "output_write_timeout_s": lambda name, raw: _parse_float(
        name, raw, minimum=0.1, exclusive=False
    ),
    "ping_timeout_s": lambda name, raw: _parse_float(name, raw, minimum=0.1, exclusive=False),
    "lease_ttl_s": lambda name, raw: _parse_float(name, raw, minimum=2.0, exclusive=False),
    "test_hooks": _parse_bool,
    "tokens_file": lambda _name, raw: Path(raw.strip()).expanduser(),
    "run_as": lambda _name, raw: raw.strip(),
    "run_limits": lambda _name, raw: parse_run_limits(raw),
    "process_tracking": _parse_choice(PROCESS_TRACKING),
}


def env_name(field_name: str) -> str:
    return "RUNVISOR_" + field_name.upper()


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read Settings from RUNVISOR_* variables; `overrides` (CLI flags) win when not None.

    Raises SettingsError naming the first bad setting.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = environ.get(env_name(name))
        if raw is not None and (raw != "" or name == "tokens"):
            values[name] = parse(env_name(name), raw)
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _PARSERS:
            raise TypeError(f"unknown setting {name}")
        values[name] = _PARSERS[name](f"--{name.replace('_', '-')}", str(value))
    return Settings(**values)
