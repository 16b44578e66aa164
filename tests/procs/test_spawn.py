"""spawn.py: real attempts under the wrapper, real signals, byte-exact output."""

# Fixtures are imported from fix_processes and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runvisor.procs.spawn import (
    ExitStatus,
    ProcessIdentity,
    is_alive,
    parse_stat,
    poll_exit,
    read_identity,
    read_stat,
    read_status_file,
    spawn_attempt,
)

from .fix_processes import Attempt, Procs, leak_guard, marker, procs  # noqa: F401

MIB = 1024 * 1024
# Bits of the signals 1-31 in a /proc/PID/status signal mask. glibc's posix_spawn leaves its two
# internal signals (32, 33) ignored; they are reserved by glibc (SIGRTMIN is 34 for programs).
STANDARD_SIGNALS = (1 << 31) - 1


def sigmask(status_text: str, name: str) -> int:
    for line in status_text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{name} missing")


def bit(sig: int) -> int:
    return 1 << (sig - 1)


# --- parsing and identity ------------------------------------------------------------------


def test_parse_stat_splits_on_the_last_parenthesis() -> None:
    rest = " ".join(["S", "1", "77", "77"] + ["0"] * 15 + ["123456"] + ["0"] * 30)
    st = parse_stat(f"4242 (a) b (c) ) {rest}\n")
    assert (st.pid, st.state, st.ppid, st.pgid, st.sid, st.start_ticks) == (
        4242,
        "S",
        1,
        77,
        77,
        123456,
    )
    with pytest.raises(ValueError):
        parse_stat("4242 no parenthesis S 1")
    with pytest.raises(ValueError):
        parse_stat("4242 (x) S 1 2")


def test_identity_of_a_process_with_an_odd_name(procs: Procs, tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"
    shutil.copy("/bin/sleep", odd)
    attempt = procs.start('exec "./a) b (c" 1000')
    tree = procs.wait_tree(attempt, lambda t: any(r.comm == "a) b (c" for r in t.values()))
    row = next(r for r in tree.values() if r.comm == "a) b (c")
    identity = read_identity(row.pid)
    assert identity == ProcessIdentity(row.pid, row.start)
    st = read_stat(row.pid)
    assert st is not None and st.ppid == attempt.pid and st.sid == attempt.pid
    assert is_alive(identity)
    os.kill(row.pid, signal.SIGKILL)
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGKILL)
    assert not is_alive(identity)


def test_identity_checks() -> None:
    me = read_identity(os.getpid())
    assert me is not None and me.start_ticks > 0
    assert is_alive(me)
    assert not is_alive(ProcessIdentity(me.pid, me.start_ticks + 1))  # recycled-pid case
    assert not is_alive(ProcessIdentity(me.pid, 0))  # unknown start never counts as alive
    assert read_identity(2**22 + 1) is None  # above any pid_max
    assert me.zombie is False
    assert ProcessIdentity(1, 2, zombie=True) == ProcessIdentity(1, 2)  # snapshot, not identity


# --- exit statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, ExitStatus(0, None)),
        (3 << 8, ExitStatus(3, None)),
        (255 << 8, ExitStatus(255, None)),
        (9, ExitStatus(None, 9)),
        (15 | 0x80, ExitStatus(None, 15)),
    ],  # 0x80: core dumped
)
def test_from_wait_status(status: int, expected: ExitStatus) -> None:
    assert ExitStatus.from_wait_status(status) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, ExitStatus(0, None)),
        (3, ExitStatus(3, None)),
        (128, ExitStatus(128, None)),
        (129, ExitStatus(None, 1)),
        (137, ExitStatus(None, 9)),
        (143, ExitStatus(None, 15)),
        (128 + 64, ExitStatus(None, 64)),
        (128 + 65, ExitStatus(193, None)),
        (255, ExitStatus(255, None)),
    ],
)
def test_from_shell_status(n: int, expected: ExitStatus) -> None:
    assert ExitStatus.from_shell_status(n) == expected


def test_shell_status_out_of_range_and_succeeded() -> None:
    for bad in (-1, 256):
        with pytest.raises(ValueError):
            ExitStatus.from_shell_status(bad)
    assert ExitStatus(0, None).succeeded
    assert not ExitStatus(1, None).succeeded
    assert not ExitStatus(None, 9).succeeded
    assert not ExitStatus(None, None).succeeded


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("exit 3", ExitStatus(3, None)),
        ("kill -9 $$", ExitStatus(None, 9)),
        ("true", ExitStatus(0, None)),
        ("exit 255", ExitStatus(255, None)),
    ],
)
def test_exit_status_via_waitpid_and_status_file(
    procs: Procs, code: str, expected: ExitStatus
) -> None:
    attempt = procs.start(code)
    assert procs.wait_exit(attempt) == expected
    assert read_status_file(attempt.status) == expected
    # Written in place: nothing beside it (no temporary file, no mv).
    assert [p.name for p in attempt.status.parent.glob(attempt.status.name + "*")] == [
        attempt.status.name
    ]
    assert attempt.output() == b""  # nothing of the wrapper's ("Killed") in the user's output


def test_a_stale_status_file_is_removed_before_spawning(procs: Procs) -> None:
    first = procs.start("exit 4")
    procs.wait_exit(first)
    stale = first.status.read_bytes()
    procs.root.joinpath("status1").write_bytes(stale)  # where the next attempt records its own
    procs.root.joinpath("status1.tmp").write_bytes(b"garbage")
    second = procs.start("sleep 1000")
    assert read_status_file(second.status) is None
    assert not second.status.with_name("status1.tmp").exists()
    os.killpg(second.pid, signal.SIGKILL)
    procs.wait_exit(second)


def test_wrapper_survives_sigterm_to_the_group_and_records_it(procs: Procs) -> None:
    attempt = procs.start("sleep 1000")
    procs.wait_tree(attempt, lambda t: any(r.comm == "sleep" for r in t.values()))
    os.killpg(attempt.pid, signal.SIGTERM)
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGTERM)
    assert read_status_file(attempt.status) == ExitStatus(None, signal.SIGTERM)


def test_wrapper_killed_leaves_no_status_file(procs: Procs) -> None:
    attempt = procs.start("sleep 1000")
    procs.wait_tree(attempt, lambda t: any(r.comm == "sleep" for r in t.values()))
    os.killpg(attempt.pid, signal.SIGKILL)
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGKILL)
    assert read_status_file(attempt.status) is None


def test_poll_exit_of_a_process_that_is_not_our_child() -> None:
    assert poll_exit(os.getppid()) is None
    assert poll_exit(1) is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),
        (b"", None),
        (b"1", ExitStatus(1, None)),
        (b"3\n", ExitStatus(3, None)),
        (b"137\n", ExitStatus(None, 9)),
        (b"abc\n", None),
        (b"-1\n", None),
        (b"999\n", None),
        (b"\xff\n", None),
    ],
)
def test_read_status_file_tolerates_missing_and_garbled(
    tmp_path: Path, content: bytes | None, expected: ExitStatus | None
) -> None:
    path = tmp_path / "status"
    if content is not None:
        path.write_bytes(content)
    assert read_status_file(path) == expected


# --- output -----------------------------------------------------------------------------------


def test_ten_mib_of_binary_output_byte_exact(procs: Procs, tmp_path: Path) -> None:
    side = tmp_path / "side"
    attempt = procs.start(f"head -c {10 * MIB} /dev/urandom | tee '{side}'")
    assert procs.wait_exit(attempt).succeeded
    out = attempt.output()
    assert len(out) == 10 * MIB
    assert hashlib.sha256(out).digest() == hashlib.sha256(side.read_bytes()).digest()


def test_one_mib_line_without_newline(procs: Procs) -> None:
    attempt = procs.start(f"head -c {MIB} /dev/zero | tr '\\0' x")
    assert procs.wait_exit(attempt).succeeded
    assert attempt.output() == b"x" * MIB


def test_stdout_and_stderr_share_one_ordered_stream(procs: Procs) -> None:
    attempt = procs.start("printf 'a\\n'; printf 'b\\n' >&2; printf 'c'; printf 'd\\n' >&2")
    assert procs.wait_exit(attempt).succeeded
    assert attempt.output() == b"a\nb\ncd\n"


def test_output_written_just_before_exit_or_death_is_kept(procs: Procs, tmp_path: Path) -> None:
    side = tmp_path / "side"
    first = procs.start("printf 'last words, no newline'; exit 7")
    assert procs.wait_exit(first) == ExitStatus(7, None)
    assert first.output() == b"last words, no newline"
    second = procs.start(f"head -c 300000 /dev/urandom | tee '{side}'; kill -9 $$")
    assert procs.wait_exit(second) == ExitStatus(None, 9)
    assert second.output() == side.read_bytes()


def test_spool_is_private_and_appended_across_attempts(procs: Procs, tmp_path: Path) -> None:
    fresh = procs.start("echo one")
    procs.wait_exit(fresh)
    assert fresh.spool.stat().st_mode & 0o777 == 0o600
    shared = tmp_path / "shared-spool"  # a restarted run goes on writing into the same spool
    shared.write_bytes(b"before\n")
    for word in ("one", "two"):
        procs.wait_exit(procs.start(f"echo {word}", spool=shared))
    assert shared.read_bytes() == b"before\none\ntwo\n"


# --- environment, descriptors, signals, session -------------------------------------------


def test_environment_is_exactly_what_was_passed(
    procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNVISOR_TEST_SECRET", "do-not-leak")
    env = {**procs.env, "A_VAR": "with spaces = and\nnewline", "EMPTY": ""}
    attempt = procs.start("env -0", env=env)
    assert procs.wait_exit(attempt).succeeded
    seen = dict(e.split("=", 1) for e in attempt.output().decode().split("\0") if e)
    bash_adds = {"PWD", "SHLVL", "_"}
    assert set(seen) - bash_adds == set(env)
    assert {k: seen[k] for k in env} == env
    assert seen["PWD"] == str(procs.root)


def test_cwd_is_honoured(procs: Procs, tmp_path: Path) -> None:
    sub = tmp_path / "work dir"
    sub.mkdir()
    attempt = procs.start('pwd; echo "$PWD"; echo "${OLDPWD-unset}"', cwd=sub)
    assert procs.wait_exit(attempt).succeeded
    assert attempt.output() == f"{sub}\n{sub}\nunset\n".encode()


def test_code_starting_with_a_dash_is_code_not_an_option(procs: Procs) -> None:
    attempt = procs.start("--version")
    assert procs.wait_exit(attempt) == ExitStatus(127, None)
    assert b"command not found" in attempt.output()


def test_stdin_is_dev_null_and_no_other_fd_is_inherited(procs: Procs) -> None:
    leaky = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaky, True)
    try:
        # `; true`: otherwise bash would exec ls in its own place, and list ls's descriptors
        attempt = procs.start("cat; readlink /proc/$$/fd/0; ls /proc/$$/fd; true")
        assert procs.wait_exit(attempt).succeeded
    finally:
        os.close(leaky)
    lines = attempt.output().decode().split()
    assert lines[0] == "/dev/null"
    assert sorted(lines[1:]) == ["0", "1", "2"]


def test_new_session_and_process_group(procs: Procs) -> None:
    attempt = procs.start("sleep 1000")
    st = read_stat(attempt.pid)
    assert st is not None
    assert st.sid == st.pgid == attempt.pid != os.getsid(0)
    os.killpg(attempt.pid, signal.SIGKILL)
    procs.wait_exit(attempt)


def test_children_get_default_signal_dispositions(procs: Procs) -> None:
    old_pipe = signal.getsignal(signal.SIGPIPE)  # Python ignores SIGPIPE; must not be inherited
    old_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        assert old_pipe == signal.SIG_IGN
        # bash's own status is read by bash itself: while it waits for a child it ignores SIGQUIT
        code = (
            'cat /proc/$PPID/status; echo @@; while IFS= read -r l; do echo "$l"; done'
            " </proc/$$/status; echo @@; cat /proc/self/status"
        )
        attempt = procs.start(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR2, old_usr2)
    assert procs.wait_exit(attempt).succeeded
    wrapper, bash, grandchild = attempt.output().decode().split("@@")
    trapped = bit(signal.SIGTERM) | bit(signal.SIGINT) | bit(signal.SIGHUP) | bit(signal.SIGQUIT)
    # The wrapper catches them with a no-op handler: caught, not ignored.
    assert sigmask(wrapper, "SigCgt") & trapped == trapped
    assert sigmask(wrapper, "SigIgn") & STANDARD_SIGNALS == 0
    # bash 5 running a multi-command -c string ignores SIGQUIT itself (an `env -i bash -c` does
    # the same), and resets it for its children, as the grandchild shows.
    assert sigmask(bash, "SigIgn") & STANDARD_SIGNALS & ~bit(signal.SIGQUIT) == 0
    assert sigmask(grandchild, "SigIgn") & STANDARD_SIGNALS == 0
    assert sigmask(grandchild, "SigBlk") == 0


# --- failures -------------------------------------------------------------------------------


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_spawn_failures_raise_and_leak_no_descriptor(procs: Procs, tmp_path: Path) -> None:
    before = _open_fds()
    good = {"code": "true", "env": procs.env, "status_path": tmp_path / "s", "cwd": tmp_path}
    with pytest.raises(FileNotFoundError):
        spawn_attempt(**{**good, "spool_path": tmp_path / "missing" / "out"})  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError):
        spawn_attempt(**{**good, "spool_path": tmp_path})  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        spawn_attempt(**{**good, "spool_path": tmp_path / "o", "cwd": tmp_path / "nope"})  # type: ignore[arg-type]
    (tmp_path / "o").touch()
    with pytest.raises(NotADirectoryError):
        spawn_attempt(**{**good, "spool_path": tmp_path / "o", "cwd": tmp_path / "o"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # posix_spawn itself fails, after the spool was opened
        spawn_attempt(**{**good, "spool_path": tmp_path / "o", "env": {"A=B": "x"}})  # type: ignore[arg-type]
    with pytest.raises(OSError) as too_long:  # one argv string is limited to 128 KiB
        spawn_attempt(**{**good, "spool_path": tmp_path / "o", "code": "#" * 200_000})  # type: ignore[arg-type]
    assert too_long.value.errno == errno.E2BIG
    assert _open_fds() == before


# --- the go-ahead gate: nothing of the run executes before the service has prepared it --------


def test_the_wrapper_runs_nothing_when_prepare_fails(procs: Procs, tmp_path: Path) -> None:
    seen: list[int] = []

    def refuse(pid: int) -> None:
        seen.append(pid)
        raise OSError(errno.EPERM, "prepare failed")

    with pytest.raises(OSError, match="prepare failed"):
        spawn_attempt(
            code=f"touch {tmp_path}/ran",
            env=procs.env,
            spool_path=tmp_path / "out",
            status_path=tmp_path / "status",
            cwd=tmp_path,
            prepare=refuse,
        )
    [pid] = seen
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 125
    assert not (tmp_path / "ran").exists() and not (tmp_path / "status").exists()


def test_prepare_runs_before_any_code_of_the_run(procs: Procs, tmp_path: Path) -> None:
    """prepare() sees the wrapper still waiting: the run's first command has not run yet."""
    states: list[bool] = []

    def check(pid: int) -> None:
        states.append((tmp_path / "ran").exists())

    identity = spawn_attempt(
        code=f"touch {tmp_path}/ran",
        env=procs.env,
        spool_path=tmp_path / "out",
        status_path=tmp_path / "status",
        cwd=tmp_path,
        prepare=check,
    )
    assert procs.wait_exit(Attempt(identity, tmp_path / "out", tmp_path / "status")).succeeded
    assert states == [False] and (tmp_path / "ran").exists()


def test_the_spawn_guard_holds_the_call_alone(procs: Procs, tmp_path: Path) -> None:
    """posix_spawn's arguments are built (and bad ones refused) before the guard is taken: the
    guard (the exit watcher's lock, which every other spawn, exit and reap waits for) is held
    for the call only, not for the seventy-odd libc calls that build its arguments."""
    entered: list[str] = []
    kept: list[int] = []

    @contextlib.contextmanager
    def guard() -> Iterator[Callable[[int], None]]:
        entered.append("guard")
        yield kept.append

    good = {
        "code": "exit 3",
        "env": procs.env,
        "spool_path": tmp_path / "out",
        "status_path": tmp_path / "status",
        "cwd": tmp_path,
        "spawn_guard": guard,
    }
    with pytest.raises(ValueError, match="illegal environment variable name"):
        spawn_attempt(**{**good, "env": {"A=B": "x"}})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embedded null byte"):
        spawn_attempt(**{**good, "code": "echo \0"})  # type: ignore[arg-type]
    assert entered == []
    identity = spawn_attempt(**good)  # type: ignore[arg-type]
    assert entered == ["guard"] and kept == [identity.pid]
    status = procs.wait_exit(Attempt(identity, tmp_path / "out", tmp_path / "status"))
    assert status.exit_code == 3
