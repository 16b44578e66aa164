"""Helpers for the tests of runvisor.embedded: process checks through /proc, data round trips,
a data dir fixture, and a fixture that stops every embedded server a test started and fails
on a leaked process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from runvisor.embedded import EmbeddedPostgres, EmbeddedRedis


def alive(pid: int) -> bool:
    """True while `pid` is a process that is not a zombie (PID 1 here reaps late)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw.rpartition(")")[2].split()[0] not in ("Z", "X")


def pids_in(comm: str, directory: Path) -> list[int]:
    """Live `comm` processes whose working directory is `directory`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not alive(int(name)):
            continue
        try:
            same_comm = Path(f"/proc/{name}/comm").read_text().strip() == comm
            if same_comm and Path(os.readlink(f"/proc/{name}/cwd")) == directory:
                found.append(int(name))
        except OSError:
            continue
    return found


def server_pids(data_dir: Path) -> list[int]:
    """Every embedded server process (postmaster, backends, valkey-server) on `data_dir`."""
    data_dir = data_dir.resolve()
    return pids_in("postgres", data_dir / "postgres") + pids_in(
        "valkey-server", data_dir / "valkey"
    )


def pg_write(url: str, value: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS embedded_probe (value text)")
        conn.execute("INSERT INTO embedded_probe VALUES (%s)", (value,))


def pg_values(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT value FROM embedded_probe ORDER BY value").fetchall()
    return [row[0] for row in rows]


def kv_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def kv_set(url: str, key: str, value: str) -> None:
    client = kv_client(url)
    try:
        client.set(key, value)
    finally:
        client.close()


def kv_get(url: str, key: str) -> str | None:
    client = kv_client(url)
    try:
        return client.get(key)
    finally:
        client.close()


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A fresh data dir, outside pytest's basetemp on purpose.

    Run as root, pgserver runs PostgreSQL as a user `pgserver` and makes every parent of the
    data dir traversable for it; pytest re-tightens /tmp/pytest-of-<user> to 0700 whenever a
    session starts (another one running at the same time, say), which would lock the server
    out of its own data mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="runvisor-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


Embedded = Callable[[Path], tuple[EmbeddedPostgres, EmbeddedRedis]]


@pytest.fixture
def embedded() -> Iterator[Embedded]:
    """A factory of (EmbeddedPostgres, EmbeddedRedis) pairs, not started, for a data dir.

    At teardown it stops every pair it made and fails the test if a server process is
    left on any of their data dirs.
    """
    made: list[tuple[EmbeddedPostgres, EmbeddedRedis]] = []

    def make(data_dir: Path) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
        pair = (EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir))
        made.append(pair)
        return pair

    yield make
    for pg, kv in reversed(made):
        kv.stop()
        pg.stop()
    leaked = {str(pg.data_dir): server_pids(pg.data_dir) for pg, _ in made}
    for pids in leaked.values():  # fail, but leave nothing running for the next tests
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not any(leaked.values()), f"server processes left behind: {leaked}"
