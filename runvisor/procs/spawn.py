"""Starting one attempt under the status wrapper, identifying it, and reading how it ended.

Linux only (/proc, posix_spawn with setsid). Pure OS primitives: no actors, no database; the
RunActor decides when to call them and must not block its message loop on any of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from runvisor.procs.posix_spawn import CLOSEFROM, closefrom_supported, prepared_spawn
from runvisor.procs.run_user import RunUser

# Held around the creation of a process; handed its pid (ExitWatcher.spawn_watched).
SpawnGuard = Callable[[], AbstractContextManager[Callable[[int], None]]]

WRAPPER_PATH = Path(__file__).with_name("attempt_wrapper.sh")
SHELL = "/bin/sh"
GATE_FD = 4  # the wrapper reads the service's go-ahead here (see attempt_wrapper.sh)
DEAD_STATES = frozenset("ZXx")  # zombie / dead: the pid exists but nothing runs any more

# Every catchable signal back to SIG_DFL in the child: Python itself ignores SIGPIPE and SIGXFSZ,
# and an ignored disposition would be inherited across exec by the user's code.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_NSIG = signal.NSIG


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as pid plus start time: a pid alone may be recycled by an unrelated process.

    `zombie` is what the /proc scan that produced this value saw; it is not part of the identity
    (not compared, not hashed), so sets of identities from different scans still line up.
    """

    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat; 0 = unknown, never treated as alive
    zombie: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat this package needs."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.start_ticks, zombie=self.state in DEAD_STATES)


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line (ValueError if malformed)."""
    # comm (field 2) is in parentheses and may itself contain spaces and ')': split on the last.
    head, sep, tail = text.rpartition(")")
    if not sep or "(" not in head:
        raise ValueError(f"malformed /proc stat line: {text[:80]!r}")
    fields = tail.split()  # fields[0] is field 3 (state); field N is fields[N - 3]
    if len(fields) < 20:
        raise ValueError(f"truncated /proc stat line: {text[:80]!r}")
    return ProcStat(
        pid=int(head.split("(", 1)[0]),
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat, or None if the process does not exist (any more) or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # FileNotFoundError, ProcessLookupError (ESRCH mid-read), PermissionError
        return None
    try:
        return parse_stat(raw.decode("latin-1"))  # comm is arbitrary bytes; latin-1 never fails
    except ValueError:
        return None


def read_identity(pid: int) -> ProcessIdentity | None:
    st = read_stat(pid)
    return None if st is None else st.identity


def is_alive(identity: ProcessIdentity) -> bool:
    """True if that very process (same pid and start time) exists and is not a zombie."""
    if identity.start_ticks == 0:
        return False  # unknown start: we cannot prove the pid still is ours
    st = read_stat(identity.pid)
    return st is not None and st.start_ticks == identity.start_ticks and st.state not in DEAD_STATES


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.signal is None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """From a raw waitpid() status (ValueError for a stopped/continued status)."""
        code = os.waitstatus_to_exitcode(status)
        return cls(None, -code) if code < 0 else cls(code, None)

    @classmethod
    def from_shell_status(cls, n: int) -> ExitStatus:
        """From a shell's $?: 128+N means killed by signal N, as bash and dash report it.

        Values above 128+NSIG (e.g. `exit 255`) cannot be signals and stay exit codes. A script
        that runs `exit 137` is indistinguishable from one killed by SIGKILL: shells conflate them.
        """
        if not 0 <= n <= 255:
            raise ValueError(f"shell status out of range: {n}")
        if 128 < n < 128 + _NSIG:
            return cls(None, n - 128)
        return cls(n, None)


def spawn_attempt(
    *,
    code: str,
    env: Mapping[str, str],
    spool_path: Path,
    status_path: Path,
    cwd: Path,
    run_user: RunUser | None = None,
    prepare: Callable[[int], None] | None = None,
    spawn_guard: SpawnGuard | None = None,
) -> ProcessIdentity:
    """Start `bash -c code` under the wrapper, in a new session, and return its identity.

    stdout and stderr both go to spool_path (appended, one byte stream, order preserved); stdin
    is /dev/null; the environment is exactly `env`; no other descriptor is inherited. The pid is
    the wrapper's, which is also the session and process-group id. The wrapper waits on a pipe
    until `prepare(pid)` (cgroup, resource limits) has run, so no code of the run executes
    before that; if `prepare` raises, the wrapper exits at once without running anything and
    the exception propagates. bash runs as `run_user` when that switches users. `spawn_guard`
    is held only around the creation of the process and is handed its pid (see
    ExitWatcher.spawn_watched). A stale status_path is removed first. Raises OSError on failure
    (E2BIG if code exceeds the kernel's 128 KiB limit for one argument), ValueError for a NUL in
    code or env, or '=' in a name.
    """
    if not stat.S_ISDIR(os.stat(cwd).st_mode):  # fail here, cleanly, rather than in the wrapper
        raise NotADirectoryError(errno.ENOTDIR, "attempt cwd is not a directory", str(cwd))
    for stale in (status_path, status_path.with_name(status_path.name + ".tmp")):
        stale.unlink(missing_ok=True)  # a previous attempt's status must not pass for this one's
    # O_CLOEXEC: other threads spawning at the same moment must not inherit our spool fd.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    fd = _high_fd(os.open(spool_path, flags, 0o600))
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    try:
        gate_r = _high_fd(gate_r)
        actions: list[tuple[object, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1),
            (os.POSIX_SPAWN_DUP2, fd, 2),
            (os.POSIX_SPAWN_DUP2, gate_r, GATE_FD),
            *_close_other_fds(keep=(fd, gate_r, GATE_FD)),
        ]
        switch = run_user if run_user is not None and run_user.switches else None
        argv = [
            SHELL,
            str(WRAPPER_PATH),
            str(status_path),
            code,
            str(cwd),
            switch.setpriv or "" if switch else "",
            str(switch.uid) if switch else "",
            str(switch.gid) if switch else "",
        ]
        # posix_spawn, not subprocess.Popen: no Popen object that could reap the pid behind the
        # RunActor's back (Popen.__del__ / _cleanup), and vfork-speed spawning; libc's, called
        # without the GIL (procs/posix_spawn.py), so the node goes on while the child starts.
        # Its arguments are built before the guard: the guard holds the call alone.
        prepared = prepared_spawn(
            SHELL,
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),  # nothing blocked, whatever the calling thread blocks
            setsigdef=_DEFAULT_SIGNALS,
        )
        with prepared as start, spawn_guard() if spawn_guard else _no_guard() as keep:
            pid = start()
            keep(pid)
        os.close(gate_r)
        gate_r = -1
        identity = _identity_after_spawn(pid)
        if prepare is not None:
            prepare(pid)  # on an exception the gate closes unopened: the wrapper runs nothing
        os.write(gate_w, b"go\n")
    finally:
        os.close(fd)
        os.close(gate_w)
        if gate_r >= 0:
            os.close(gate_r)
    return identity


@contextlib.contextmanager
def _no_guard() -> Iterator[Callable[[int], None]]:
    yield lambda pid: None


def _high_fd(fd: int) -> int:
    """Move `fd` above the descriptors the child's file actions write (0-2, GATE_FD)."""
    if fd > GATE_FD:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, GATE_FD + 1)
    os.close(fd)
    return moved


def _close_other_fds(keep: tuple[int, ...]) -> list[tuple[int, ...]]:
    if closefrom_supported():  # Python 3.13+, or glibc 2.34+ (procs/posix_spawn.py)
        # After the dup2s: fd 3 is made valid, then closed; everything above GATE_FD at once.
        return [(os.POSIX_SPAWN_DUP2, 0, 3), (os.POSIX_SPAWN_CLOSE, 3), (CLOSEFROM, GATE_FD + 1)]
    # Python opens everything O_CLOEXEC (PEP 446), so only descriptors someone explicitly made
    # inheritable can leak; close those. (One racing thread could still add one; closefrom won't.)
    # A look at every descriptor of the node, a thousand with a thousand runs: at each spawn.
    actions: list[tuple[int, ...]] = []
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n < 3 or n in keep:
            continue
        try:
            if os.get_inheritable(n):
                actions.append((os.POSIX_SPAWN_CLOSE, n))
        except OSError:  # the listdir's own descriptor, or closed meanwhile
            continue
    return actions


def _identity_after_spawn(pid: int) -> ProcessIdentity:
    # The child cannot leave /proc before it is reaped (an exited child stays a zombie, and its
    # stat still shows its start time), so this only fails if something else reaped it: SIGCHLD
    # set to SIG_IGN, or a stray waitpid(-1). A short retry covers a transient /proc error; after
    # that start_ticks=0 means unknown: is_alive() says False and nothing will ever signal it.
    for _ in range(3):
        identity = read_identity(pid)
        if identity is not None:
            return identity
        time.sleep(0.001)
    return ProcessIdentity(pid, 0)


def poll_exit(pid: int) -> ExitStatus | None:
    """Reap the wrapper if it has exited; None while it runs or if it is not our child.

    Not our child (ChildProcessError: after adoption, or already reaped) also gives None: the
    caller then relies on is_alive() and read_status_file(). The wrapper exits with bash's $?,
    so that is decoded like the status file (137 means SIGKILL); if the wrapper itself was
    killed by a signal, that signal is reported.
    """
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    result = ExitStatus.from_wait_status(status)
    if result.exit_code is not None:
        return ExitStatus.from_shell_status(result.exit_code)
    return result


def read_status_file(path: Path) -> ExitStatus | None:
    """The status the wrapper recorded, or None if missing, empty or garbled."""
    try:
        text = path.read_bytes().decode("ascii").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    if not text.isdigit() or int(text) > 255:
        return None
    return ExitStatus.from_shell_status(int(text))


@functools.cache
def boot_id() -> str:
    """This boot of the kernel: a pid and its start time mean nothing across a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
