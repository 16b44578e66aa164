"""procs/posix_spawn: libc's posix_spawn without the GIL, as os.posix_spawn otherwise."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runvisor.procs import posix_spawn as spawn_module
from runvisor.procs.posix_spawn import prepared_spawn


def posix_spawn(path: str, argv: list[str], env: dict[str, str], **options: Any) -> int:
    """Both steps of prepared_spawn at once, as os.posix_spawn is called."""
    with prepared_spawn(path, argv, env, **options) as start:
        return start()


# The child opens a FIFO for reading before its exec: it waits there until a writer comes, and
# posix_spawn (vfork) returns only after the exec. The writer is a Python thread that needs the
# GIL for each of its tries: holding the GIL through the call, as os.posix_spawn does, would
# never let it try, and the script would hang.
HOLDS_NO_GIL = """
import errno, os, sys, threading
from runvisor.procs.posix_spawn import prepared_spawn
fifo = sys.argv[1]
os.mkfifo(fifo)
def writer():
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader is there
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            continue
        os.write(fd, b"through the fifo")
        os.close(fd)
        return
thread = threading.Thread(target=writer, daemon=True)
thread.start()
with prepared_spawn("/bin/cat", ["cat"], {}, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, fifo, os.O_RDONLY, 0)], setsid=True, setsigmask=(),
        setsigdef=()) as start:
    pid = start()
thread.join()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_libc_is_called_directly_here() -> None:
    assert spawn_module.available()  # glibc: the ctypes path, not the fallback


def test_other_threads_run_while_the_child_starts(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    try:
        done = subprocess.run(
            [sys.executable, "-c", HOLDS_NO_GIL, str(fifo)],
            capture_output=True,
            timeout=20,
            cwd=Path(__file__).resolve().parents[2],
        )
    except subprocess.TimeoutExpired:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # free the child left waiting
        pytest.fail("the writer thread never ran: posix_spawn held the GIL")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"through the fifo"


def test_file_actions_session_signals_and_environment_as_os_posix_spawn(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pid = posix_spawn(
            "/bin/sh",
            # The mask read by an exec of grep (it keeps it), not by grep reading the shell's:
            # dash blocks every signal for a moment around each vfork, and grep may see that.
            ["sh", "-c", 'echo "$A $$"; ps -o sid= -p $$; exec grep SigBlk /proc/self/status'],
            {"A": "x y", "PATH": "/usr/bin:/bin"},
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_CLOSE, fd)],
            setsid=True,
            setsigmask=(),
            setsigdef=(),
        )
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == f"x y {pid}"
    assert int(lines[1]) == pid  # its own session
    assert lines[2].split() == ["SigBlk:", "0000000000000000"]


def test_bad_input_raises_like_os_posix_spawn() -> None:
    def spawn(argv: list[str], env: dict[str, str]) -> int:
        return posix_spawn(
            "/bin/true", argv, env, file_actions=[], setsid=False, setsigmask=(), setsigdef=()
        )

    with pytest.raises(ValueError):
        spawn(["true", "a\0b"], {})
    with pytest.raises(ValueError):
        spawn(["true"], {"A": "a\0b"})
    with pytest.raises(ValueError):
        spawn(["true"], {"A=B": "c"})
    with pytest.raises(OSError) as missing:
        posix_spawn(
            "/nonexistent", ["x"], {}, file_actions=[], setsid=False, setsigmask=(), setsigdef=()
        )
    assert missing.value.errno == errno.ENOENT


def test_closefrom_closes_every_descriptor_from_n_up(tmp_path: Path) -> None:
    """glibc 2.34+ (or Python 3.13+): one file action closes the node's thousand descriptors,
    inheritable or not, instead of a look at each of them at every spawn."""
    if not spawn_module.closefrom_supported():
        pytest.skip("neither glibc's addclosefrom_np nor os.POSIX_SPAWN_CLOSEFROM here")
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    leaky = os.open("/dev/null", os.O_RDONLY)
    high = os.dup2(leaky, 200, inheritable=True)
    try:
        pid = posix_spawn(
            "/bin/sh",
            ["sh", "-c", "ls /proc/$$/fd; true"],
            {"PATH": "/usr/bin:/bin"},
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (spawn_module.CLOSEFROM, 3)],
            setsid=False,
            setsigmask=(),
            setsigdef=(),
        )
    finally:
        for opened in (fd, leaky, high):
            os.close(opened)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(out.read_text().split()) == ["0", "1", "2"]


def test_the_attempt_spawn_uses_closefrom_where_libc_has_it() -> None:
    from runvisor.procs.spawn import GATE_FD, _close_other_fds

    has_it = hasattr(ctypes.CDLL(None), "posix_spawn_file_actions_addclosefrom_np")
    assert spawn_module.closefrom_supported() == (has_it or hasattr(os, "POSIX_SPAWN_CLOSEFROM"))
    if has_it:
        assert (spawn_module.CLOSEFROM, GATE_FD + 1) in _close_other_fds(keep=(5, 6))
