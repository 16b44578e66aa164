"""PostgreSQL and Redis for one bench run: embedded servers (runvisor.embedded, as `serve` and
the tests use them) in a temporary directory, or the servers given. Either way the node gets a
scratch database and a Redis key prefix of its own, both removed at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from bench.errors import BenchFailed
from runvisor.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from tests.fix_embedded import server_pids
from tests.fix_stores import drop_database, with_dbname


def delete_keys(redis_url: str, prefix: str) -> int:
    """Delete every key starting with `prefix`; how many there were."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


class Stores:
    """`open()` then `close()` (in a finally): the latter undoes whatever the former did."""

    def __init__(
        self, *, admin_database_url: str | None, redis_url: str | None, work_dir: Path, tag: str
    ) -> None:
        self.admin_database_url = admin_database_url
        self.redis_url = redis_url
        self.embedded_dir = work_dir / "stores"
        self.database_name = f"runvisor_bench_{tag}"
        self.redis_prefix = f"runvisor-bench-{tag}"
        self.database_url = ""
        self._postgres: EmbeddedPostgres | None = None
        self._valkey: EmbeddedRedis | None = None
        self._database_created = False

    @property
    def embedded(self) -> bool:
        return self._postgres is not None or self._valkey is not None

    def describe(self) -> str:
        pg = "embedded PostgreSQL" if self._postgres else "the PostgreSQL given"
        kv = "embedded Valkey" if self._valkey else "the Redis given"
        return f"stores: {pg}, {kv}"

    def open(self) -> None:
        try:
            if self.admin_database_url is None:
                self._postgres = EmbeddedPostgres(self.embedded_dir)
                self.admin_database_url = self._postgres.start()
            if self.redis_url is None:
                self._valkey = EmbeddedRedis(self.embedded_dir)
                self.redis_url = self._valkey.start()
            with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database_name))
                )
            self._database_created = True
            self.database_url = with_dbname(self.admin_database_url, self.database_name)
            redis.Redis.from_url(self.redis_url, socket_timeout=10).ping()
        except (EmbeddedServerError, psycopg.Error, redis.RedisError) as exc:
            raise BenchFailed(f"the stores could not be set up: {exc}") from exc

    def close(self) -> tuple[list[str], list[str]]:
        """What was cleaned up, and what could not be (the bench's own failures)."""
        done: list[str] = []
        errors: list[str] = []
        if self._database_created and self.admin_database_url:
            try:
                drop_database(self.admin_database_url, self.database_name)
                done.append(f"database {self.database_name} dropped")
            except psycopg.Error as exc:
                errors.append(f"could not drop database {self.database_name}: {exc}")
        if self.redis_url and not self._valkey:
            try:
                count = delete_keys(self.redis_url, self.redis_prefix + ":")
                done.append(f"{count} Redis keys deleted")
            except redis.RedisError as exc:
                errors.append(f"could not delete Redis keys {self.redis_prefix}:*: {exc}")
        if self._valkey:
            self._valkey.stop()
        if self._postgres:
            self._postgres.stop()
        if self.embedded:
            left = server_pids(self.embedded_dir)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                errors.append(f"embedded server processes were left running: {left}")
            done.append("embedded servers stopped")
        return done, errors


@contextlib.contextmanager
def autovacuum_stand_in(
    database_url: str, notes: list[str], *, period_s: float | None = None
) -> Iterator[None]:
    """Where the server's autovacuum is off (it is on by default, and runvisor's node warns
    without it), VACUUM ANALYZE the scratch database every autovacuum_naptime, as autovacuum
    would: without it the runs table's dead rows pile up (three updates a run) and its
    statistics never change, and every figure after B1 measures that instead (B2's round trip
    doubled after B1's 20,000 runs)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        on = conn.execute("SHOW autovacuum").fetchone() == ("on",)
        row = conn.execute(
            "SELECT setting::float8 FROM pg_settings WHERE name = 'autovacuum_naptime'"
        ).fetchone()
    if on:
        yield
        return
    if period_s is None:
        period_s = float(row[0]) if row else 60.0
    notes.append(
        f"autovacuum is off on this PostgreSQL server: the bench vacuums and analyzes its scratch"
        f" database every {period_s:.0f} s (autovacuum_naptime) in its place"
    )
    print(f"   {notes[-1]}", flush=True)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(database_url, autocommit=True) as conn,
            ):
                conn.execute("VACUUM (ANALYZE)")

    thread = threading.Thread(target=loop, name="bench-autovacuum", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
