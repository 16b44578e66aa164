"""RUNVISOR_RUN_UIDS: one uid per attempt, so that runs cannot reach one another.

With one shared run user (RUNVISOR_RUN_AS), the runs of a node may ptrace, signal and read the
/proc entries of each other's processes (the kernel allows all of that between processes of
one uid) and write to each other's files. With a range of uids that belong to no user or group
of the machine, each attempt runs as a uid of its own, with that same number as its only group:
nothing of one run is another's.

UidPool hands the uids out (the lowest free one) and takes them back once the attempt's
processes are gone, after removing what the uid left (uid_sweep). Each attempt's uid is
recorded in its spool directory (`ATTEMPT.uid`, written before the spawn), so that after a
restart of the service the uids of the adopted attempts are held again before anything new
starts. No uid free: runs wait, queued, as for RUNVISOR_MAX_RUNNING.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import threading
import time
from pathlib import Path
from typing import Any

from runvisor.errors import SettingsError
from runvisor.logs import get_logger
from runvisor.procs import uid_sweep
from runvisor.procs.run_user import RunUser, find_setpriv
from runvisor.procs.spool import SpoolLayout
from runvisor.procs.uid_range import SETTING, UidRange

log = get_logger(__name__)


def check_uid_range(
    uids: UidRange,
    *,
    run_as: str | None,
    euid: int | None = None,
    uid_map: str = "/proc/self/uid_map",
) -> str:
    """Refuse a range the service cannot use safely; the path of setpriv when it can.

    Raises SettingsError naming the setting: RUNVISOR_RUN_AS set too, a service that is not
    root, a uid or gid of the machine inside the range, uids this user namespace cannot map.
    """
    euid = os.geteuid() if euid is None else euid
    where = f"{SETTING}={uids}"
    if run_as:
        raise SettingsError(
            f"RUNVISOR_RUN_AS and {SETTING}: set one, not both "
            f"({SETTING} runs each attempt as a uid of its own)"
        )
    if euid != 0:
        raise SettingsError(
            f"{where}: the service runs as uid {euid}; running each attempt as its own uid "
            "needs root"
        )
    for user in pwd.getpwall():
        if user.pw_uid in uids:
            raise SettingsError(
                f"{where}: uid {user.pw_uid} is the user {user.pw_name!r} of this machine; "
                "choose a range that holds no user"
            )
    for group in grp.getgrall():
        if group.gr_gid in uids:
            raise SettingsError(
                f"{where}: gid {group.gr_gid} is the group {group.gr_name!r} of this machine; "
                "each attempt's group has its uid's number, so the range must hold no group"
            )
    if not _mapped(uids, uid_map):
        raise SettingsError(
            f"{where}: not every uid of the range is mapped in this user namespace "
            f"({uid_map}); choose a range inside the mapping"
        )
    return find_setpriv(where, "running runs as other uids")


def _mapped(uids: UidRange, uid_map: str) -> bool:
    """Whether one line of uid_map ("inside outside count") covers the whole range."""
    try:
        lines = Path(uid_map).read_text().splitlines()
    except OSError:
        return True  # no user namespaces: every uid exists
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and fields[0].isdigit() and fields[2].isdigit():
            inside, count = int(fields[0]), int(fields[2])
            if inside <= uids.first and uids.last < inside + count:
                return True
    return False


def write_uid_file(path: Path, uid: int) -> None:
    """Record the uid (write, then rename: a reader never sees half a number)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{uid}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_uid_file(path: Path) -> int | None:
    try:
        text = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class UidPool:
    """The uids of this node's range: which attempt holds which, and their clean-up.

    Thread-safe: the Supervisor takes and holds uids, RunActors (and the Supervisor, for an
    attempt it ends itself) release them. A uid is free when no attempt holds it and what its
    last attempt left is gone. Nothing is handed out before open(), which the Supervisor calls
    once the adopted attempts hold their uids again.
    """

    def __init__(
        self,
        uids: UidRange,
        *,
        setpriv: str,
        spool: SpoolLayout,
        sweep_dirs: tuple[Path, ...] = uid_sweep.SHARED_DIRS,
        max_entries: int = uid_sweep.MAX_ENTRIES,
    ) -> None:
        self.range = uids
        self.setpriv = setpriv
        self.spool = spool
        self.sweep_dirs = sweep_dirs
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], int] = {}  # (run id, attempt) -> uid
        # Not free: held, being swept, or swept with a process left (retried by resweep).
        self._taken: set[int] = set()
        self._dirty: set[int] = set()
        self._open = False

    def user(self, uid: int) -> RunUser:
        """Who an attempt with `uid` runs as: no passwd entry, so named `run-UID`, no home."""
        return RunUser(uid, uid, f"run-{uid}", None, self.setpriv)

    # Allocation

    def open(self) -> None:
        with self._lock:
            self._open = True

    def available(self) -> int:
        """How many uids take() would give now."""
        with self._lock:
            return self.range.size - len(self._taken) if self._open else 0

    def take(self, run_id: int, attempt: int) -> int | None:
        """The lowest free uid, now held by this attempt; None if none is free (or not open)."""
        with self._lock:
            key = (run_id, attempt)
            if key in self._held:
                return self._held[key]
            if not self._open or len(self._taken) >= self.range.size:
                return None
            uids = range(self.range.first, self.range.last + 1)
            uid = next(u for u in uids if u not in self._taken)
            self._held[key] = uid
            self._taken.add(uid)
            return uid

    def hold(self, run_id: int, attempt: int, uid: int) -> bool:
        """An adopted attempt's recorded uid is its again. False if outside the range or held
        by another attempt (then the attempt runs on without one of this node's uids)."""
        with self._lock:
            key = (run_id, attempt)
            if self._held.get(key) == uid:
                return True
            if uid not in self.range or uid in self._taken or key in self._held:
                log.warning("recorded uid not held again", run_id=run_id, attempt=attempt, uid=uid)
                return False
            self._held[key] = uid
            self._taken.add(uid)
            return True

    def record_path(self, run_id: int, attempt: int) -> Path:
        """Where an attempt's uid is recorded: beside its output and status files."""
        return self.spool.uid_record(run_id, attempt)

    def record(self, run_id: int, attempt: int) -> None:
        """Write down the attempt's uid, before its spawn (OSError if that fails)."""
        uid = self.uid_of(run_id, attempt)
        if uid is None:
            raise RuntimeError(f"run {run_id} attempt {attempt} holds no uid")
        write_uid_file(self.record_path(run_id, attempt), uid)

    def hold_recorded(self, run_id: int, attempt: int) -> int | None:
        """After a restart: the uid recorded for the attempt, held by it again (None if there
        is no record, e.g. it started before RUNVISOR_RUN_UIDS was set)."""
        uid = read_uid_file(self.record_path(run_id, attempt))
        if uid is None or not self.hold(run_id, attempt, uid):
            return None
        return uid

    def uid_of(self, run_id: int, attempt: int) -> int | None:
        with self._lock:
            return self._held.get((run_id, attempt))

    def in_use(self) -> int:
        with self._lock:
            return len(self._taken)

    def hand_over_work_dir(self, path: Path, uid: int) -> None:
        """A new attempt's working directory: it, and what the run's earlier attempts (uids of
        this range) left in it, become `uid`'s."""
        uid_sweep.hand_over_tree(path, uid, uid, from_owned=self.range.__contains__)

    # Taking uids back

    def release(self, run_id: int, attempt: int) -> uid_sweep.Swept | None:
        """The attempt has ended and its processes (as its cgroup or marker finds them) are
        gone: remove whatever of its uid is left, then free the uid. Only the first call for
        an attempt does anything (its RunActor and the Supervisor may both try); None then."""
        with self._lock:
            uid = self._held.pop((run_id, attempt), None)
        if uid is None:
            return None
        # The record first: a crash from here on leaves the uid unheld at the next start, and
        # the start-up sweep finishes this one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(run_id, attempt))
        started = time.monotonic()
        swept = self._sweep(uid.__eq__)
        took_back = uid_sweep.take_back(self.spool.run_work(run_id), uid.__eq__)
        self._settle(uid, swept)
        log.info(
            "attempt uid released",
            run_id=run_id,
            attempt=attempt,
            uid=uid,
            killed=swept.processes,
            files=swept.files,
            ipc=swept.ipc,
            work_dir_taken_back=took_back,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return swept

    def sweep_unheld(self) -> uid_sweep.Swept:
        """At start-up, once adopted attempts hold their uids: remove what any other uid of
        the range left (attempts that ended while the service was down, or whose clean-up a
        crash interrupted) and take their working directories back."""
        with self._lock:
            taken = set(self._taken)

        def unheld(uid: int) -> bool:
            return uid in self.range and uid not in taken

        swept = self._sweep(unheld)
        with contextlib.suppress(OSError):  # no work dir yet
            for entry in os.scandir(self.spool.work_dir):
                if entry.name.isdigit():
                    uid_sweep.take_back(Path(entry.path), unheld)
        if swept.processes_left:
            log.warning("processes of unheld uids survived the start-up sweep")
        elif swept.anything:
            log.info(
                "start-up sweep of the uid range",
                killed=swept.processes,
                files=swept.files,
                ipc=swept.ipc,
            )
        return swept

    def resweep(self) -> None:
        """Try again for uids whose processes survived their sweep (the Supervisor's tick)."""
        with self._lock:
            dirty = list(self._dirty)
        for uid in dirty:
            self._settle(uid, self._sweep(uid.__eq__))

    def _sweep(self, owned: uid_sweep.UidMatch) -> uid_sweep.Swept:
        return uid_sweep.sweep(owned, dirs=self.sweep_dirs, max_entries=self.max_entries)

    def _settle(self, uid: int, swept: uid_sweep.Swept) -> None:
        with self._lock:
            if swept.processes_left or (swept.entries_exhausted and swept.files):
                # Not all gone: a process stuck in the kernel, or more files than one pass
                # looks at. Not reused until a later pass (each tick) finds nothing more.
                self._dirty.add(uid)
                log.warning(
                    "something of the uid is left; uid not reused yet",
                    uid=uid,
                    processes_left=swept.processes_left,
                    files_removed=swept.files,
                )
            else:
                self._dirty.discard(uid)
                self._taken.discard(uid)

    def describe(self) -> dict[str, Any]:
        """For /readyz."""
        return {"first": self.range.first, "last": self.range.last, "in_use": self.in_use()}
