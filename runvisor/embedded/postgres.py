"""Embedded PostgreSQL (PyPI pgserver): data in DATA_DIR/postgres, a unix socket only.

pgserver re-attaches to a server left running on the same pgdata (by a service that was
killed), which this module makes safe against stale pid files and dead postmasters.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from runvisor.embedded.common import (
    EmbeddedServerError,
    alive,
    pids_in,
    read_int,
    rotate,
    runs_in,
    send,
    tail,
    wait_gone,
)

log = logging.getLogger(__name__)

# pgserver keeps process-wide state (one inter-process lock object, a class-level registry),
# so two threads must not construct servers at the same time.
_PGSERVER_LOCK = threading.Lock()


def _import_pgserver() -> ModuleType:
    # Imported on first use: a service given RUNVISOR_DATABASE_URL never needs it.
    with warnings.catch_warnings():
        # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (containers,
        # CI); pgserver then keeps its lock file in /tmp/runtime-<uid>, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver
    pg_logger = logging.getLogger("pgserver")
    if pg_logger.level == logging.NOTSET:
        pg_logger.setLevel(logging.WARNING)  # it logs every command line at INFO
    return pgserver


class EmbeddedPostgres:
    """PostgreSQL 16 from pgserver, data in DATA_DIR/postgres, reached over a unix socket only.

    pgserver re-attaches to a server already running on the same pgdata, initdb's a new one
    (trust auth, user `postgres`) and, run as root, creates a system user `pgserver` to run
    the server as (PostgreSQL refuses root). We construct its PostgresServer with
    cleanup_mode=None and stop the server ourselves: 'stop' would stop it only from an atexit
    hook, and only when pgdata/.handle_pids.json lists no other pid, so one SIGKILLed service
    leaves a pid there that keeps every later service from ever stopping it; 'delete' would
    wipe the data. The service's shutdown is the moment to stop, not interpreter exit.
    """

    start_timeout_s: float = 30.0
    stop_timeout_s: float = 20.0

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.directory = self.data_dir / "postgres"
        self._lock = threading.Lock()
        self._server: Any = None
        self._pid: int | None = None
        self._url: str | None = None

    @property
    def url(self) -> str | None:
        """The conninfo URL while started, else None."""
        return self._url

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while started, else None."""
        return self._pid

    def start(self) -> str:
        """Start (or re-attach to) the server; return a psycopg 3 conninfo URL."""
        with self._lock:
            if self._url is not None and self._pid is not None and alive(self._pid):
                return self._url
            self._stop_locked()  # if it died since the last start: forget it, kill leftovers
            deadline = time.monotonic() + self.start_timeout_s
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            began = time.monotonic()
            while True:
                self._clear_stale(deadline)
                self._start_or_attach()
                try:
                    if self._connects(deadline):
                        break
                except BaseException:
                    self._stop_locked()
                    raise
                # The postmaster died as we attached to it (one killed a moment before
                # still looks alive): its files are stale now, so clear them and start anew.
                log.warning("embedded PostgreSQL died while starting; retrying")
                self._stop_locked()
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"embedded PostgreSQL in {self.directory} keeps dying; log tail:\n"
                        f"{tail(self.directory / 'log')}"
                    )
            atexit.register(self.stop)  # a safety net; the service calls stop() itself
            log.info(
                "embedded PostgreSQL ready",
                extra={
                    "pid": self._pid,
                    "pgdata": str(self.directory),
                    "seconds": round(time.monotonic() - began, 3),
                },
            )
            assert self._url is not None
            return self._url

    def _start_or_attach(self) -> None:
        pgserver = _import_pgserver()
        try:
            with _PGSERVER_LOCK:
                server = pgserver.PostgresServer(self.directory, cleanup_mode=None)
            info = server.get_postmaster_info()
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise EmbeddedServerError(
                f"embedded PostgreSQL in {self.directory} did not start: {exc}\n"
                f"log tail ({self.directory / 'log'}):\n{tail(self.directory / 'log')}"
            ) from exc
        if info.socket_dir is None:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.directory} has no socket")
        self._server, self._pid = server, info.pid
        self._url = (
            f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir))}"
            f"&port={info.port or 5432}"
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGQUIT and SIGKILL past the deadline. Idempotent."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        atexit.unregister(self.stop)
        pid, server = self._pid, self._server
        self._pid = self._url = self._server = None
        if server is not None:
            # With cleanup_mode=None this only drops our pid from pgserver's bookkeeping.
            with _PGSERVER_LOCK, contextlib.suppress(Exception):
                server.cleanup()
            atexit.unregister(server._cleanup)  # registered by pgserver; no longer needed
        if pid is None or not runs_in(pid, "postgres", self.directory):
            self._kill_orphans()  # it crashed: only its children may be left
            return
        # Fast shutdown: sessions are rolled back and disconnected, a checkpoint is written.
        send(pid, signal.SIGINT)
        left = wait_gone([pid], self.stop_timeout_s)
        if left:
            log.warning(
                "embedded PostgreSQL ignored a fast shutdown; quitting it", extra={"pid": pid}
            )
            send(pid, signal.SIGQUIT)  # immediate shutdown: crash recovery at next start
            left = wait_gone(left, 5.0)
        if left:
            send(pid, signal.SIGKILL)
            wait_gone(left, 5.0)
        # The postmaster waits for its children, but after SIGQUIT/SIGKILL one may linger.
        self._kill_orphans()

    def _kill_orphans(self) -> None:
        """SIGKILL postgres processes left in pgdata by a postmaster that is gone."""
        live = read_int(self.directory / "postmaster.pid") or 0
        if runs_in(live, "postgres", self.directory):
            return  # they belong to a running postmaster (a later start's, say): not orphans
        orphans = pids_in("postgres", self.directory)
        for pid in orphans:
            send(pid, signal.SIGKILL)
        if wait_gone(orphans, 5.0):
            raise EmbeddedServerError(f"postgres processes on {self.directory} do not exit")

    def _clear_stale(self, deadline: float) -> None:
        """Make a crashed server's leftovers harmless before pgserver looks at them.

        pgserver re-attaches whenever postmaster.pid names a pid that exists, so a zombie
        postmaster, or an unrelated process that reused the pid after a reboot, would be
        "re-attached" to and yield a dead URL; and it asserts on a postmaster.pid cut short by
        a crash during start-up. PostgreSQL in turn refuses to start while the socket lock
        file names a pid that exists (zombies included).
        """
        pid_file = self.directory / "postmaster.pid"
        while True:
            try:
                lines = pid_file.read_text().splitlines()
            except FileNotFoundError:
                return
            pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
            if not runs_in(pid, "postgres", self.directory):
                break
            status = lines[7].strip() if len(lines) >= 8 else ""
            if status == "ready":
                return  # a live server, e.g. left by a killed service: pgserver re-attaches
            # Starting up, recovering or shutting down: wait until it is ready or gone.
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL pid {pid} on {self.directory} stays {status or 'starting'!r}"
                )
            time.sleep(0.05)
        log.warning("removing a stale postmaster.pid", extra={"pgdata": str(self.directory)})
        # Backends of a SIGKILLed postmaster hold its shared memory until they notice.
        self._kill_orphans()
        socket_dirs = {self.directory}
        if len(lines) >= 5 and lines[4].strip():
            socket_dirs.add(Path(lines[4].strip()))
        for socket_dir in socket_dirs:
            for lock in socket_dir.glob(".s.PGSQL.*.lock"):
                owner = read_int(lock) or 0
                if not (alive(owner) and runs_in(owner, "postgres", self.directory)):
                    lock.unlink(missing_ok=True)
                    lock.with_name(lock.name.removesuffix(".lock")).unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        rotate(self.directory / "log")  # safe now: no server writes to it

    def _connects(self, deadline: float) -> bool:
        """Poll until the server takes a connection (True) or its postmaster is gone (False)."""
        import psycopg

        assert self._url is not None and self._pid is not None
        while True:
            try:
                with psycopg.connect(self._url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError as exc:
                if not runs_in(self._pid, "postgres", self.directory):
                    return False
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"embedded PostgreSQL at {self._url} does not accept connections: "
                        f"{exc}\nlog tail:\n{tail(self.directory / 'log')}"
                    ) from exc
                time.sleep(0.05)
