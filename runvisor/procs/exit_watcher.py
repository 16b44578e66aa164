"""One thread that learns at once when a run's process exits, and reaps adopted orphans.

Each watched process gets a pidfd (it becomes readable when the process exits, whether or not
we are its parent, so adopted runs are covered too). As the service is a child subreaper,
orphaned descendants of runs are re-parented to it; the same thread reaps their zombies,
except those of processes it watches, which their RunActor reaps itself to read the status.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator

from runvisor.logs import get_logger
from runvisor.procs.proctree import reap_children
from runvisor.procs.spawn import ProcessIdentity, SpawnGuard

log = get_logger(__name__)

ExitCallback = Callable[[], None]
REAP_INTERVAL_S = 1.0


class ExitWatcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll = select.epoll()
        self._by_fd: dict[int, tuple[int, ExitCallback]] = {}
        self._fd_of: dict[int, int] = {}  # pid -> its pidfd: unwatch in O(1), not O(runs)
        # Pids whose exit status belongs to their owner (a RunActor), from watch() until
        # unwatch(): the reaper leaves them alone even after they exited.
        self._watched_pids: set[int] = set()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._running = False
        self._thread = threading.Thread(
            target=self._loop, name="runvisor-exit-watcher", daemon=True
        )

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._running = False
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:
            for fd in list(self._by_fd):
                self._close(fd)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def spawn_watched(
        self, spawn: Callable[[SpawnGuard], ProcessIdentity], on_exit: ExitCallback
    ) -> ProcessIdentity:
        """Spawn (`spawn` holds the guard it is given around the creation of the process) and
        watch. The reaper is held off from the creation until the pid is set aside for its
        owner, so it never takes this child's exit status; what the spawn does afterwards (the
        cgroup, the limits: milliseconds) runs outside the lock, alongside other spawns."""
        kept: list[int] = []

        def keep(pid: int) -> None:
            self._watched_pids.add(pid)
            kept.append(pid)

        @contextlib.contextmanager
        def guard() -> Iterator[Callable[[int], None]]:
            with self._lock:
                yield keep

        try:
            identity = spawn(guard)
        except BaseException:
            with self._lock:  # its wrapper exits without running anything: the reaper's now
                self._watched_pids.difference_update(kept)
            raise
        with self._lock:
            try:
                watching = self._watch_locked(identity.pid, on_exit)
            except OSError:
                # No pidfd (EMFILE, say): a process nobody watches must not run on.
                self._watched_pids.discard(identity.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(identity.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(identity.pid, 0)
                raise
        if not watching:
            on_exit()
        return identity

    def watch(self, pid: int, on_exit: ExitCallback) -> bool:
        """Call `on_exit` (from the watcher thread) once `pid` has exited. False if it is gone."""
        with self._lock:
            return self._watch_locked(pid, on_exit)

    def _watch_locked(self, pid: int, on_exit: ExitCallback) -> bool:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        if (old := self._fd_of.get(pid)) is not None:
            self._close(old)  # watched again (adoption after a failed actor): one pidfd
        self._by_fd[fd] = (pid, on_exit)
        self._fd_of[pid] = fd
        self._watched_pids.add(pid)
        self._epoll.register(fd, select.EPOLLIN)
        return True

    def unwatch(self, pid: int) -> None:
        """The owner is done with `pid` (reaped it, or gave up): the reaper may take it now."""
        with self._lock:
            self._watched_pids.discard(pid)
            if (fd := self._fd_of.get(pid)) is not None:
                self._close(fd)

    def _close(self, fd: int) -> None:
        pid, _on_exit = self._by_fd.pop(fd)
        if self._fd_of.get(pid) == fd:
            del self._fd_of[pid]
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        os.close(fd)

    def _loop(self) -> None:
        next_reap = 0.0
        while self._running:
            try:
                events = self._epoll.poll(REAP_INTERVAL_S)
            except InterruptedError:
                continue
            callbacks: list[ExitCallback] = []
            with self._lock:
                for fd in _still_readable([fd for fd, _mask in events if fd in self._by_fd]):
                    callbacks.append(self._by_fd[fd][1])
                    self._close(fd)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + REAP_INTERVAL_S
                self._reap_orphans()
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("exit callback failed")

    def _reap_orphans(self) -> None:
        with self._lock:
            try:
                reap_children(exclude=self._watched_pids)
            except Exception:
                log.exception("reaping orphaned children failed")


def _still_readable(fds: list[int]) -> list[int]:
    """The fds among `fds` that are readable now, looked at again under the lock.

    Between epoll's answer and the lock, an owner may unwatch (closing its pidfd) and a new
    spawn may get the same fd number for a process that is still running: without this check
    that run would be told its process had exited.
    """
    if not fds:
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, mask in poller.poll(0) if mask & select.POLLIN]
