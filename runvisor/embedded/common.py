"""What both embedded servers need: telling our server processes from others, logs, paths.

Processes are read with psutil: none of this is on a hot path (start, stop, recovery).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107
# A log that grew past this is moved aside (one old generation kept) before the next start.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
POLL_S = 0.02


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or found in an unusable state."""


def alive(pid: int) -> bool:
    # A zombie has released everything but its pid; our parent-less servers become zombies
    # until PID 1 reaps them, and a zombie must not count as a running server.
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def runs_in(pid: int, comm: str, directory: Path) -> bool:
    """Whether `pid` is a live `comm` process whose working directory is `directory`.

    Both servers run with their data directory as cwd (PostgreSQL chdirs there; Valkey is
    started there), which tells our server from an unrelated process that reused its pid.
    """
    if not alive(pid):
        return False
    try:
        process = psutil.Process(pid)
        return process.name() == comm and Path(process.cwd()) == directory
    except psutil.Error:  # gone meanwhile, or another user's process: not ours either way
        return False


def pids_in(comm: str, directory: Path) -> list[int]:
    """Every live `comm` process working in `directory`."""
    return [pid for pid in psutil.pids() if runs_in(pid, comm, directory)]


def send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of `pids` is alive or `timeout` passes; return those still alive."""
    # Not psutil.wait_procs: it waits for a zombie (not our child) to be reaped as well.
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_S)
        left = [pid for pid in left if alive(pid)]
    return left


def read_int(path: Path) -> int | None:
    """The number on the first line of a pid file, or None."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last `lines` lines written to `path` after `offset`, for error messages."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def rotate(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def fits_sun_path(path: Path) -> bool:
    return len(os.fsencode(path)) <= UNIX_PATH_MAX
