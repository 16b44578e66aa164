"""Removing what an attempt's own uid left behind (RUNVISOR_RUN_UIDS), and handing a run's
working directory from one attempt's uid to the next.

With one uid per attempt, whatever that uid owns belongs to that attempt: its processes,
whatever session, process group or environment they have; the files it left in the directories
every user may write to; its SysV IPC objects. No user of the machine has that uid (start-up
refuses such a range) and each node has a range of its own, so removing all of it is safe, and
the next attempt that gets the uid finds nothing of the previous one.

Linux only (/proc, /proc/sysvipc). Every walk goes through directory descriptors and never
follows a symbolic link, so a run cannot point the service at another directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runvisor.logs import get_logger
from runvisor.procs.proctree import signal_all
from runvisor.procs.spawn import DEAD_STATES, ProcessIdentity, read_stat

log = get_logger(__name__)

# Where any user may create files. Those missing on a host (/dev/mqueue unmounted) are skipped.
SHARED_DIRS = (
    Path("/tmp"),
    Path("/var/tmp"),
    Path("/dev/shm"),
    Path("/run/lock"),
    Path("/dev/mqueue"),
)
# Entries looked at per sweep, over all the directories: bounded work even in a /tmp of
# millions of files. A directory owned by the uid is removed whole and not counted.
MAX_ENTRIES = 100_000
MAX_DEPTH = 8  # how deep to follow world-writable directories made by others
KILL_DEADLINE_S = 2.0
_STOP_WAIT_S = 0.05
_IPC_RMID = 0
# /proc/sysvipc file, its id column, the libc call that removes one object of it.
_IPC_KINDS = (("shm", "shmid", "shmctl"), ("sem", "semid", "semctl"), ("msg", "msqid", "msgctl"))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

UidMatch = Callable[[int], bool]


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep removed. `processes_left` > 0: some survived SIGKILL within the deadline
    (stuck in the kernel, say), so the uid must not be given to another attempt yet."""

    processes: int = 0
    processes_left: int = 0
    files: int = 0
    ipc: int = 0
    entries_exhausted: bool = False

    @property
    def anything(self) -> bool:
        return bool(self.processes or self.processes_left or self.files or self.ipc)


def sweep(
    owned: UidMatch, *, dirs: tuple[Path, ...] = SHARED_DIRS, max_entries: int = MAX_ENTRIES
) -> Swept:
    """Kill the processes of the matching uids, then remove their files and IPC objects."""
    killed, left = kill_processes_of(owned)
    files, exhausted = remove_files_of(owned, dirs, max_entries)
    ipc = remove_ipc_of(owned)
    return Swept(killed, left, files, ipc, exhausted)


# ---- processes ------------------------------------------------------------------------------


def _uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uid of `pid` (empty if it is gone).

    From `status`, not the owner of /proc/PID: a process that made itself non-dumpable shows
    its /proc directory as root's.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return tuple(int(word) for word in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def processes_of(owned: UidMatch) -> set[ProcessIdentity]:
    """Every live (not zombie) process any of whose uids matches."""
    found: set[ProcessIdentity] = set()
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        uids = _uids(int(name))
        if not any(owned(uid) for uid in uids):
            continue
        st = read_stat(int(name))
        if st is not None and st.state not in DEAD_STATES:
            found.add(st.identity)
    return found


def kill_processes_of(owned: UidMatch, deadline_s: float = KILL_DEADLINE_S) -> tuple[int, int]:
    """SIGKILL every process of the matching uids: (how many were killed, how many are left).

    Frozen with SIGSTOP first, round after round until a scan finds none not yet stopped, so
    that a fork bomb cannot outrun the kill. Each signal goes through a pidfd after checking
    the start time: a recycled pid is never hit.
    """
    end = time.monotonic() + deadline_s
    stopped: set[ProcessIdentity] = set()
    killed: set[ProcessIdentity] = set()
    while True:
        live = processes_of(owned)
        new = live - stopped
        if new and time.monotonic() < end:
            signal_all(new, signal.SIGSTOP)
            stopped |= new
            _wait_stopped(new, min(end, time.monotonic() + _STOP_WAIT_S))
            continue
        if not live:
            return len(killed), 0
        for identity in live:
            if signal_all([identity], signal.SIGKILL):
                killed.add(identity)
        if time.monotonic() >= end:
            time.sleep(0.01)  # let the last kills land before counting what is left
            return len(killed), len(processes_of(owned))
        time.sleep(0.005)
        stopped &= live  # those that died are out; the others are re-checked


def _wait_stopped(processes: set[ProcessIdentity], until: float) -> None:
    """SIGSTOP is asynchronous: a process may still fork until it has really stopped."""
    while processes and time.monotonic() < until:
        time.sleep(0.001)
        processes = {p for p in processes if _state(p) not in "TtZXx"}


def _state(identity: ProcessIdentity) -> str:
    st = read_stat(identity.pid)
    return "X" if st is None or st.start_ticks != identity.start_ticks else st.state


# ---- files ----------------------------------------------------------------------------------


def remove_files_of(
    owned: UidMatch, dirs: tuple[Path, ...] = SHARED_DIRS, max_entries: int = MAX_ENTRIES
) -> tuple[int, bool]:
    """Remove what the matching uids own in `dirs`: (entries removed, budget exhausted).

    An entry owned by the uid goes, a directory with everything in it. Directories of others
    are entered only where the uid could have written (world-writable ones, /tmp's own kind).
    """
    budget = [max_entries]
    removed = 0
    for path in dirs:
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:
            continue  # not on this host
        try:
            removed += _sweep_dir(fd, owned, budget, depth=0)
        finally:
            os.close(fd)
    if budget[0] <= 0:
        log.warning(
            "uid sweep stopped at its limit of entries; some files may be left",
            max_entries=max_entries,
        )
    return removed, budget[0] <= 0


def _sweep_dir(dir_fd: int, owned: UidMatch, budget: list[int], depth: int) -> int:
    removed = 0
    with os.scandir(dir_fd) as it:
        names = [entry.name for entry in it]
    for name in names:
        if budget[0] <= 0:
            break
        budget[0] -= 1
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if owned(st.st_uid):
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: follows no symlink
                else:
                    os.unlink(name, dir_fd=dir_fd)
                removed += 1
            elif _may_hold_theirs(st, owned, depth):
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    if os.path.samestat(st, os.fstat(sub)):  # not swapped meanwhile
                        removed += _sweep_dir(sub, owned, budget, depth + 1)
                finally:
                    os.close(sub)
        except OSError as exc:  # gone meanwhile, or not removable: go on with the others
            if not isinstance(exc, FileNotFoundError):
                log.warning("uid sweep could not remove an entry", entry=name, error=str(exc))
    return removed


def _may_hold_theirs(st: os.stat_result, owned: UidMatch, depth: int) -> bool:
    """A directory of someone else that the uid may have written into."""
    if not stat.S_ISDIR(st.st_mode) or depth >= MAX_DEPTH:
        return False
    return bool(st.st_mode & stat.S_IWOTH) or bool(st.st_mode & stat.S_IWGRP and owned(st.st_gid))


# ---- SysV IPC -------------------------------------------------------------------------------


def remove_ipc_of(owned: UidMatch) -> int:
    """Remove the shared memory segments, semaphore sets and message queues whose owner or
    creator matches. How many were removed."""
    libc = ctypes.CDLL(None, use_errno=True)
    removed = 0
    for kind, id_column, call in _IPC_KINDS:
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split(), strict=False))
            try:
                ids = int(row[id_column]), int(row["uid"]), int(row["cuid"])
            except (KeyError, ValueError):
                continue
            ipc_id, uid, cuid = ids
            if not (owned(uid) or owned(cuid)):
                continue
            args = (ipc_id, 0, _IPC_RMID) if call == "semctl" else (ipc_id, _IPC_RMID, None)
            if getattr(libc, call)(*args) == 0:
                removed += 1
            else:
                log.warning(
                    "uid sweep could not remove an IPC object",
                    kind=kind,
                    id=ipc_id,
                    error=os.strerror(ctypes.get_errno()),
                )
    return removed


# ---- the run's working directory ------------------------------------------------------------


def hand_over_tree(path: Path, uid: int, gid: int, *, from_owned: UidMatch) -> int:
    """Give `path` and whatever in it the matching uids own to uid:gid; how many entries.

    For the next attempt of a run: its files from earlier attempts belong to their uids. An
    entry of anyone else stays as it is, and so does a file with more than one link (with
    hard links not protected, it could be someone else's file linked in). Symbolic links are
    changed themselves, never followed.
    """
    os.chown(path, uid, gid, follow_symlinks=False)
    fd = os.open(path, _DIR_FLAGS)
    try:
        return 1 + _hand_over_dir(fd, uid, gid, from_owned)
    finally:
        os.close(fd)


def _hand_over_dir(dir_fd: int, uid: int, gid: int, from_owned: UidMatch) -> int:
    changed = 0
    with os.scandir(dir_fd) as it:
        names = [entry.name for entry in it]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not from_owned(st.st_uid):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and st.st_nlink > 1 and not stat.S_ISLNK(st.st_mode):
                continue
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            changed += 1
            if is_dir:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    if os.path.samestat(st, os.fstat(sub)):
                        changed += _hand_over_dir(sub, uid, gid, from_owned)
                finally:
                    os.close(sub)
    return changed


def take_back(path: Path, owned: UidMatch) -> bool:
    """Between attempts: the working directory becomes the service's (0700), so that an
    attempt of another run that gets the same uid later cannot enter it. True if changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or not owned(st.st_uid):
        return False
    # No one can swap the entry: its parent (DATA_DIR/work) is the service's.
    os.chown(path, os.getuid(), os.getgid(), follow_symlinks=False)
    os.chmod(path, 0o700)  # the run may have opened it to others
    return True
