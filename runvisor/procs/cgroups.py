"""One cgroup v2 per attempt: every process of the attempt stays in it, whatever it does.

A process can leave its session and process group (setsid), clear its environment (env -i) and
be orphaned; it cannot leave its cgroup without write access to another cgroup's
`cgroup.procs`, which the run user does not have. So the attempt's cgroup is the complete list
of its processes: a stop signals them all, `cgroup.kill` ends them all at once (no freeze and
kill rounds), and `cgroup.events` says when none is left, without scanning /proc.

Layout: `<cgroup2 mount><the service's own cgroup>/runvisor-<node id>/run-<run id>-<attempt>`.
The names are derived, not stored, so an adopted attempt finds its cgroup again after a
restart of the service. Where no cgroup can be created (no cgroup2 mount, read-only in a
container, no permission), the node tracks processes by /proc scans instead (proctree).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from runvisor.logs import get_logger

log = get_logger(__name__)

WANTED_CONTROLLERS = ("memory", "pids")
_ATTEMPT_DIR = re.compile(r"run-([0-9]+)-([0-9]+)")
_EMPTY_POLL_S = 0.002


class CgroupUnavailable(Exception):
    """No cgroup per attempt on this host; the message says why."""


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the directory of the file system mounted there ("/": the whole of it)
    point: Path
    fs_type: str
    super_options: frozenset[str]


def _mounts(mountinfo: str) -> Iterator[_Mount]:
    """The mounts /proc/PID/mountinfo lists; none if it cannot be read."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return
    for line in lines:
        # "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if sep and len(fields) >= 5 and after:
            options = frozenset(after[2].split(",")) if len(after) > 2 else frozenset()
            yield _Mount(fields[3], Path(fields[4].replace("\\040", " ")), after[0], options)


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified when hybrid)."""
    for mount in _mounts(mountinfo):
        if mount.fs_type == "cgroup2" and mount.root == "/":
            return mount.point
    return None


def favors_dynamic_moves(mount: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether the cgroup v2 hierarchy at `mount` has `favordynmods` (Linux 6.0+). Without it,
    each move of a process into a cgroup waits for an RCU grace period: 9-16 ms per run's start
    measured here, the largest part of a short run's round trip."""
    return any(
        m.point == mount and m.fs_type == "cgroup2" and "favordynmods" in m.super_options
        for m in _mounts(mountinfo)
    )


def own_cgroup(pid: int | str = "self") -> str | None:
    """The v2 cgroup of a process, relative to the hierarchy's root ("/..."), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


@dataclass(frozen=True, slots=True)
class CgroupTree:
    """The directory under which this node creates one cgroup per attempt."""

    mount: Path
    root: Path  # .../runvisor-<node id>
    controllers: frozenset[str]  # those enabled for the attempts' cgroups
    favordynmods: bool = False  # see favors_dynamic_moves

    def attempt(self, run_id: int, attempt: int) -> AttemptCgroup:
        return AttemptCgroup(self.root / f"run-{run_id}-{attempt}", self.mount, self.controllers)

    def existing(self) -> Iterator[tuple[int, int, AttemptCgroup]]:
        """(run id, attempt, cgroup) of every attempt cgroup present (adoption, clean-up)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            match = _ATTEMPT_DIR.fullmatch(name)
            if match:
                run_id, attempt = int(match[1]), int(match[2])
                yield run_id, attempt, self.attempt(run_id, attempt)

    def remove_if_unused(self) -> None:
        """At shutdown: remove this node's directory unless attempts (detached, to be adopted
        at the next start) still have cgroups in it."""
        with contextlib.suppress(OSError):  # not empty (runs go on), or gone: both fine
            self.root.rmdir()


def open_cgroup_tree(node_id: str) -> CgroupTree:
    """Create (or reuse) this node's cgroup directory and prove a process can be moved into
    a cgroup under it. Raises CgroupUnavailable with the reason."""
    mount = cgroup2_mount()
    if mount is None:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    own = own_cgroup()
    if own is None:
        raise CgroupUnavailable("this process is in no cgroup v2")
    base = mount / own.lstrip("/")
    root = base / f"runvisor-{node_id}"
    try:
        root.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {root}: {exc.strerror}") from None
    controllers = _enable_controllers(base, root)
    _probe(root, mount)
    return CgroupTree(
        mount=mount,
        root=root,
        controllers=controllers,
        favordynmods=favors_dynamic_moves(mount),
    )


def _enable_controllers(base: Path, root: Path) -> frozenset[str]:
    """Enable memory and pids for the attempts where the host lets us; best effort.

    cgroup v2 enables a controller for children only if the parent has no processes of its own
    (except at the hierarchy's root): when the service itself sits in `base`, that fails with
    EBUSY and attempts get no memory.max/pids.max (the rlimits still apply).
    """
    for parent in (base, root):
        available = set(_words(parent / "cgroup.controllers"))
        enabled = set(_words(parent / "cgroup.subtree_control"))
        for name in WANTED_CONTROLLERS:
            if name in available and name not in enabled:
                try:
                    (parent / "cgroup.subtree_control").write_text(f"+{name}")
                except OSError as exc:
                    log.info(
                        "cgroup controller not enabled",
                        controller=name,
                        cgroup=str(parent),
                        error=exc.strerror,
                    )
    return frozenset(set(_words(root / "cgroup.subtree_control")) & set(WANTED_CONTROLLERS))


def _probe(root: Path, mount: Path) -> None:
    """Move a short-lived child into a fresh cgroup and kill it there: the whole mechanism."""
    probe = AttemptCgroup(root / f"probe-{os.getpid()}", mount, frozenset())
    try:
        probe.create({})
        child = subprocess.Popen(
            ["/bin/sh", "-c", "read _"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        try:
            probe.add(child.pid)
            if probe.kill(timeout_s=2.0) != 1:
                raise CgroupUnavailable(f"cgroup.kill did not end the probe in {probe.path}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
        probe.remove()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.path.rmdir()
        raise CgroupUnavailable(f"cannot use cgroups under {root}: {exc.strerror}") from None


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


class AttemptCgroup:
    """The cgroup of one attempt."""

    def __init__(self, path: Path, mount: Path, controllers: frozenset[str]) -> None:
        self.path = path
        self.controllers = controllers
        # As /proc/PID/cgroup names it: membership is checked there before a signal is sent.
        self.name = "/" + str(path.relative_to(mount)) if path.is_relative_to(mount) else ""

    def __repr__(self) -> str:
        return f"AttemptCgroup({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self, limits: Mapping[str, int | None]) -> None:
        """Make the directory (kept if it exists) and write the limits its controllers take."""
        with contextlib.suppress(FileExistsError):
            self.path.mkdir(mode=0o755)
        for name, value in self.controller_limits(limits).items():
            (self.path / name).write_text(value)

    def controller_limits(self, limits: Mapping[str, int | None]) -> dict[str, str]:
        """The cgroup files to write for these run limits, given the enabled controllers."""
        files: dict[str, str] = {}
        if "memory" in self.controllers and "as" in limits:
            files["memory.max"] = _max(limits["as"])
        if "pids" in self.controllers and "nproc" in limits:
            files["pids.max"] = _max(limits["nproc"])
        return files

    def add(self, pid: int) -> None:
        """Move `pid` into the cgroup (its future children are born there)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(word) for word in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        """Whether a live process is in it (zombies are not: they left at exit)."""
        try:
            text = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in text

    def signal(self, sig: int) -> int:
        """Send `sig` to every process in the cgroup; how many were signalled.

        Through a pidfd, after checking that the process it pins is still in this cgroup: a pid
        read from cgroup.procs may have exited and been reused by then.
        """
        sent = 0
        for pid in self.pids():
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if own_cgroup(pid) == self.name:
                    signal.pidfd_send_signal(pidfd, sig)
                    sent += 1
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        return sent

    def kill(self, timeout_s: float = 2.0) -> int:
        """SIGKILL every process in the cgroup and wait (at most `timeout_s`) until it is empty.

        Returns how many processes were in it. `cgroup.kill` (Linux 5.14+) is atomic: a process
        forking at that moment cannot slip out. Without it, freeze, kill each, thaw.
        """
        count = len(self.pids())
        if count == 0 and not self.populated():
            return 0
        try:
            (self.path / "cgroup.kill").write_text("1")
        except FileNotFoundError:
            if not self.exists():
                return 0
            self._freeze_and_kill()
        self.wait_empty(timeout_s)
        return count

    def _freeze_and_kill(self) -> None:
        freeze = self.path / "cgroup.freeze"
        with contextlib.suppress(OSError):
            freeze.write_text("1")
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                freeze.write_text("0")

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.populated():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_EMPTY_POLL_S)
        return True

    def remove(self) -> None:
        """Remove the (empty) cgroup; kill what is still in it first. Gone already: fine."""
        for _ in range(3):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                self.kill()
        log.warning("attempt cgroup could not be removed", cgroup=str(self.path))


def _max(value: int | None) -> str:
    return "max" if value is None else str(value)
