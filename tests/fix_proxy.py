"""A TCP proxy in front of PostgreSQL or Redis that a test can cut and restore, or pause and
resume: a real outage of the network path, with the real server behind it (no fakes)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._flowing = threading.Event()  # cleared by pause(): no byte is forwarded
        self._flowing.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until restore()."""
        self._up.clear()
        with self._lock:
            for a, b in self._pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._pairs.clear()

    def restore(self) -> None:
        self._up.set()

    def pause(self) -> None:
        """Forward no byte, either way, until resume(), and keep every connection open: calls
        hang as with a SIGSTOPped server (the kernel still acknowledges, so no TCP timeout
        fires). New connections are accepted and hang too."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(2)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                if not self._flowing.wait(0.2):
                    continue  # paused: the bytes wait in the kernel's buffers
                for key, _ in sel.select(0.2):
                    if not self._flowing.is_set():
                        break
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def proxied_database_url(url: str, proxy: TcpProxy) -> str:
    params = conninfo_to_dict(url)
    params["host"], params["port"] = "127.0.0.1", str(proxy.port)
    params.pop("hostaddr", None)
    return make_conninfo(**params)


def database_target(url: str) -> tuple[str, int]:
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "127.0.0.1")
    if host.startswith("/"):
        pytest.skip("the database listens on a unix socket; the outage test needs TCP")
    return host, int(params.get("port") or 5432)


def redis_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        pytest.skip("Redis listens on a unix socket; the outage test needs TCP")
    return parts.hostname or "127.0.0.1", parts.port or 6379


def proxied_redis_url(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = f"127.0.0.1:{proxy.port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}:{parts.password or ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(*database_target(database_url))
    yield proxy
    proxy.close()


@pytest.fixture
def redis_proxy(redis_server_url: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(*redis_target(redis_server_url))
    yield proxy
    proxy.close()
