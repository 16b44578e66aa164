"""The exit watcher, in process, with real processes."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runvisor.procs.exit_watcher import ExitWatcher
from runvisor.procs.spawn import poll_exit, spawn_attempt
from tests.polling import wait_until


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()],
        5,
        "threads started by the test to end",
    )


def test_the_watcher_reports_an_exit_at_once_and_leaves_the_status_to_the_owner(
    tmp_path: Path,
) -> None:
    watcher = ExitWatcher()
    watcher.start()
    exited = threading.Event()
    try:
        identity = watcher.spawn_watched(
            lambda guard: spawn_attempt(
                code="sleep 0.2; exit 4",
                env={"PATH": os.environ["PATH"]},
                spool_path=tmp_path / "out",
                status_path=tmp_path / "status",
                cwd=tmp_path,
                spawn_guard=guard,
            ),
            exited.set,
        )
        started = time.monotonic()
        assert exited.wait(5), "no exit reported"
        assert time.monotonic() - started < 1.0
        # The watcher must not have reaped it: the owner still reads the exit status.
        status = poll_exit(identity.pid)
        assert status is not None and status.exit_code == 4
    finally:
        watcher.stop()


def test_an_exit_event_is_checked_again_before_it_is_believed(tmp_path: Path) -> None:
    """An fd reported ready by epoll may since have been closed and reused by a new pidfd of a
    process that still runs: the watcher re-polls under its lock, and that says not ready."""
    from runvisor.procs.exit_watcher import _still_readable

    env = {"PATH": os.environ["PATH"]}
    sleeper = spawn_attempt(
        code="sleep 30",
        env=env,
        spool_path=tmp_path / "a",
        status_path=tmp_path / "a.status",
        cwd=tmp_path,
    )
    quick = spawn_attempt(
        code="true",
        env=env,
        spool_path=tmp_path / "b",
        status_path=tmp_path / "b.status",
        cwd=tmp_path,
    )
    running_fd, exited_fd = os.pidfd_open(sleeper.pid), os.pidfd_open(quick.pid)
    try:
        wait_until(lambda: _still_readable([exited_fd]), 5, "the quick process to exit")
        assert _still_readable([running_fd, exited_fd]) == [exited_fd]
    finally:
        os.kill(sleeper.pid, 9)
        os.close(running_fd)
        os.close(exited_fd)
        wait_until(lambda: poll_exit(sleeper.pid), 5, "the sleeper to be reaped")
        wait_until(lambda: poll_exit(quick.pid), 5, "the quick one to be reaped")


def test_an_unwatched_pid_is_not_reported_and_one_watched_again_is_reported_once(
    tmp_path: Path,
) -> None:
    """unwatch closes that pid's pidfd alone (looked up by pid, not by a walk over every watched
    process); a pid watched again keeps one pidfd, the last watcher's."""
    env = {"PATH": os.environ["PATH"]}
    a, b = (
        spawn_attempt(
            code="sleep 30",
            env=env,
            spool_path=tmp_path / name,
            status_path=tmp_path / f"{name}.status",
            cwd=tmp_path,
        )
        for name in ("a", "b")
    )
    told: list[str] = []
    b_told = threading.Event()
    watcher = ExitWatcher()
    watcher.start()
    try:
        assert watcher.watch(a.pid, lambda: told.append("a"))
        assert watcher.watch(b.pid, lambda: told.append("b, first watch"))
        assert watcher.watch(b.pid, lambda: (told.append("b, again"), b_told.set()))
        watcher.unwatch(a.pid)
        os.kill(a.pid, 9)
        wait_until(lambda: poll_exit(a.pid), 5, "a to be reaped")  # gone before b goes
        os.kill(b.pid, 9)
        assert b_told.wait(5), "b's exit not reported"
        assert told == ["b, again"]
    finally:
        watcher.stop()
        for identity in (a, b):
            with contextlib.suppress(ProcessLookupError):
                os.kill(identity.pid, 9)
            with contextlib.suppress(ChildProcessError):  # (reaped above)
                os.waitpid(identity.pid, 0)
