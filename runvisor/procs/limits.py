"""Resource limits of a run: RUNVISOR_RUN_LIMITS, a command's `limits`, and applying them.

Limits are set with prlimit(2) on the attempt's wrapper before it starts the user's code (it
waits for the service's go-ahead), so every process of the attempt inherits them and none runs
unlimited for a moment. rlimits are per process (`cpu`, `as`, `fsize`, `nofile`) or per user
(`nproc` counts every process of the run user on the machine); where the attempt's cgroup has
the controllers, `as` also becomes its `memory.max` and `nproc` its `pids.max`, which bound the
attempt as a whole.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping

from runvisor.errors import SettingsError
from runvisor.models import LIMIT_NAMES

SETTING = "RUNVISOR_RUN_LIMITS"
UNLIMITED = "unlimited"
MAX_LIMIT = 2**62
_RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
}
_BYTE_LIMITS = frozenset({"as", "fsize"})
_SUFFIXES = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

# A limit as stored: a positive integer, or "unlimited". Effective: an integer, or None.
LimitValue = int | str
EffectiveLimits = dict[str, int | None]


def parse_run_limits(raw: str) -> dict[str, LimitValue]:
    """`cpu=60,as=2G,fsize=512M,nofile=1024,nproc=256` (K/M/G/T: powers of 1024, for bytes)."""
    limits: dict[str, LimitValue] = {}
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        name = name.lower()
        if not sep or name not in _RLIMITS:
            raise SettingsError(
                f"{SETTING}: {item[:40]!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(LIMIT_NAMES)}"
            )
        if name in limits:
            raise SettingsError(f"{SETTING}: {name} is given twice")
        limits[name] = _parse_value(name, value)
    return limits


def _parse_value(name: str, value: str) -> LimitValue:
    text = value.lower()
    if text == UNLIMITED:
        return UNLIMITED
    factor = 1
    if name in _BYTE_LIMITS and text[-1:] in _SUFFIXES:
        factor, text = _SUFFIXES[text[-1]], text[:-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise SettingsError(f"{SETTING}: {name}={value[:40]!r}: not a positive integer")
    number = int(text) * factor
    if not 1 <= number <= MAX_LIMIT:
        raise SettingsError(f"{SETTING}: {name}={value[:40]!r}: must be 1 to 2^62")
    return number


def effective_limits(
    defaults: Mapping[str, LimitValue], overrides: Mapping[str, LimitValue]
) -> EffectiveLimits:
    """The node's defaults, overridden by the command's; only the limits that are set."""
    merged = {**defaults, **overrides}
    return {
        name: None if value == UNLIMITED else int(value)
        for name, value in merged.items()
        if name in _RLIMITS
    }


def apply_rlimits(pid: int, limits: Mapping[str, int | None]) -> None:
    """Set soft and hard limits of `pid` (OSError, e.g. EPERM to raise one without root)."""
    for name, value in limits.items():
        limit = resource.RLIM_INFINITY if value is None else value
        resource.prlimit(pid, _RLIMITS[name], (limit, limit))
