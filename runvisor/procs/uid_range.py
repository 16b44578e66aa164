"""RUNVISOR_RUN_UIDS as a setting: an inclusive range of uids (pure; no logging, as config
reads it before logging is set up). What the node does with it: runvisor.procs.run_uids."""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.errors import SettingsError

SETTING = "RUNVISOR_RUN_UIDS"
MAX_UID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid


@dataclass(frozen=True, slots=True)
class UidRange:
    first: int
    last: int

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_uid_range(name: str, raw: str) -> UidRange:
    """`START-END`, an inclusive range of uids (syntax only; the machine is checked later)."""
    text = raw.strip()
    first, sep, last = text.partition("-")
    if not sep or not all(part.isascii() and part.isdigit() for part in (first, last)):
        raise SettingsError(
            f"{name}={raw!r}: expected START-END, an inclusive range of uids (e.g. 200000-265535)"
        )
    start, end = int(first), int(last)
    if start > end:
        raise SettingsError(f"{name}={raw!r}: the range is empty (START is above END)")
    if start == 0:
        raise SettingsError(f"{name}={raw!r}: the range includes uid 0 (root)")
    if end > MAX_UID:
        raise SettingsError(f"{name}={raw!r}: uids go up to {MAX_UID}")
    return UidRange(start, end)
