"""Fixtures for tests that start real processes: a per-test marker, an attempt launcher, and a
leak guard that fails the test if any process of it is left behind.

The guard looks at /proc with its own small parser, not through runvisor.procs.proctree, so the
module under test cannot vouch for itself.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

import runvisor
from runvisor.procs.spawn import ExitStatus, ProcessIdentity, poll_exit, spawn_attempt
from tests.polling import wait_until

MARKER_ENV = "RUNVISOR_ATTEMPT_MARKER"
REPO_ROOT = Path(runvisor.__file__).resolve().parents[1]
_DEAD = frozenset("ZXx")
T = TypeVar("T")


@dataclass(frozen=True)
class Proc:
    """One row of an independent /proc scan."""

    pid: int
    comm: str
    state: str
    ppid: int
    sid: int
    start: int

    @property
    def live(self) -> bool:
        return self.state not in _DEAD


def proc_row(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode("latin-1")
    except OSError:
        return None
    left, _, right = raw.rpartition(")")
    f = right.split()
    comm = left.split("(", 1)[1]
    return Proc(pid, comm, f[0], int(f[1]), int(f[3]), int(f[19]))


def proc_table() -> dict[int, Proc]:
    rows = (proc_row(int(n)) for n in os.listdir("/proc") if n.isdigit())
    return {row.pid: row for row in rows if row is not None}


def has_marker(pid: int, marker: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARKER_ENV}={marker}".encode() in env


def live_tree(marker: str, leader_pid: int | None = None) -> dict[int, Proc]:
    """Live processes carrying the marker, plus live descendants of them and of the leader."""
    table = proc_table()
    me = os.getpid()
    found = {p: r for p, r in table.items() if p != me and r.live and has_marker(p, marker)}
    roots = set(found) | ({leader_pid} if leader_pid else set())
    changed = True
    while changed:
        changed = False
        for pid, row in table.items():
            if row.live and pid not in found and pid != me and row.ppid in roots:
                found[pid] = row
                roots.add(pid)
                changed = True
    if leader_pid in table and table[leader_pid].live:
        found[leader_pid] = table[leader_pid]
    return found


def _kill_exact(pid: int, start: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        row = proc_row(pid)
        if row is not None and row.start == start:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _reap_leftover(leader: ProcessIdentity) -> bool:
    """Reap a wrapper the test left unreaped (killing it first if needed); True if it had to."""
    _kill_exact(leader.pid, leader.start_ticks)
    deadline = time.monotonic() + 10
    while True:
        try:
            if os.waitpid(leader.pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:
            return False  # reaped by the test: good
        if time.monotonic() > deadline:
            return True
        time.sleep(0.005)


@dataclass
class Attempt:
    identity: ProcessIdentity
    spool: Path
    status: Path

    @property
    def pid(self) -> int:
        return self.identity.pid

    def output(self) -> bytes:
        return self.spool.read_bytes()


@dataclass
class Procs:
    """Starts attempts for one test and remembers every process it saw, for the leak guard."""

    marker: str
    root: Path
    leaders: list[Attempt] = field(default_factory=list)
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start ticks

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", MARKER_ENV: self.marker}

    def start(
        self,
        code: str,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        spool: Path | None = None,
    ) -> Attempt:
        n = len(self.leaders)
        spool = spool or self.root / f"out{n}"
        status = self.root / f"status{n}"
        identity = spawn_attempt(
            code=code,
            env=self.env if env is None else env,
            spool_path=spool,
            status_path=status,
            cwd=cwd or self.root,
        )
        attempt = Attempt(identity, spool, status)
        self.leaders.append(attempt)
        self.seen[attempt.pid] = attempt.identity.start_ticks
        return attempt

    def wait_exit(self, attempt: Attempt, timeout_s: float = 10.0) -> ExitStatus:
        return wait_until(lambda: poll_exit(attempt.pid), timeout_s, f"exit of {attempt.pid}")

    def tree(self, attempt: Attempt | None = None) -> dict[int, Proc]:
        """The live process tree (independent scan), remembered for the leak guard."""
        found = live_tree(self.marker, attempt.pid if attempt else None)
        self.seen.update({pid: row.start for pid, row in found.items()})
        return found

    def wait_tree(
        self, attempt: Attempt, ready: Callable[[dict[int, Proc]], bool], timeout_s: float = 10.0
    ) -> dict[int, Proc]:
        def probe() -> dict[int, Proc] | None:
            found = self.tree(attempt)
            return found if ready(found) else None

        return wait_until(probe, timeout_s, "the attempt's processes")


def count_comm(tree: dict[int, Proc], comm: str) -> int:
    return sum(1 for row in tree.values() if row.comm == comm)


@pytest.fixture
def marker() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def leak_guard(marker: str, tmp_path: Path) -> Iterator[Procs]:
    """After the test: SIGKILL whatever carries its marker or was seen, reap, fail if any."""
    procs = Procs(marker, tmp_path)
    yield procs
    leftovers: dict[int, Proc] = {}
    deadline = time.monotonic() + 10
    while True:
        table = proc_table()
        live = {
            pid: row
            for pid, row in table.items()
            if row.live
            and pid != os.getpid()
            and (has_marker(pid, marker) or procs.seen.get(pid) == row.start)
        }
        if not live or time.monotonic() > deadline:
            break
        leftovers.update(live)
        for pid, row in live.items():
            _kill_exact(pid, row.start)
        time.sleep(0.01)
    unreaped = [a.pid for a in procs.leaders if _reap_leftover(a.identity)]
    if leftovers or unreaped:
        rows = [f"{r.pid} {r.comm} state={r.state} ppid={r.ppid}" for r in leftovers.values()]
        pytest.fail(f"processes left behind: {rows}; wrappers never reaped: {unreaped}")


@pytest.fixture
def procs(leak_guard: Procs) -> Procs:
    return leak_guard
