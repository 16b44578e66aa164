"""Real PostgreSQL and Redis for tests: the CI servers when RUNVISOR_TEST_*_URL are set,
embedded ones otherwise. Every test gets a fresh database (from a migrated template) and a
Redis key prefix of its own; both are removed afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runvisor.store.live import LiveState, redis_client
from runvisor.store.migrate import apply_migrations
from runvisor.store.redis_keys import RedisKeys

TEMPLATE_DB = f"runvisor_tmpl_{os.getpid()}"


@pytest.fixture(scope="session")
def embedded_stores_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: a later pytest session resets that tree to mode 0700, and an
    # embedded PostgreSQL running as another user (pgserver does so under root) would lose it.
    path = Path(tempfile.mkdtemp(prefix="runvisor-test-stores-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(embedded_stores_dir: Path) -> Iterator[str]:
    url = os.environ.get("RUNVISOR_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from runvisor.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(embedded_stores_dir / "pg")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server_url(embedded_stores_dir: Path) -> Iterator[str]:
    url = os.environ.get("RUNVISOR_TEST_REDIS_URL")
    if url:
        yield url
        return
    from runvisor.embedded import EmbeddedRedis

    server = EmbeddedRedis(embedded_stores_dir / "valkey")
    try:
        yield server.start()
    finally:
        server.stop()


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database with every migration applied, copied for each test."""
    drop_database(pg_server_url, TEMPLATE_DB)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    try:
        apply_migrations(with_dbname(pg_server_url, TEMPLATE_DB))
        yield TEMPLATE_DB
    finally:
        drop_database(pg_server_url, TEMPLATE_DB)


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    name = f"runvisor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield with_dbname(pg_server_url, name)
    finally:
        drop_database(pg_server_url, name)


@pytest.fixture
def redis_prefix(redis_server_url: str) -> Iterator[str]:
    prefix = f"rvtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_server_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A node's data dir, where a production one would be: reachable by the run user (the
    service makes it 0711), not under pytest's 0700 tree."""
    path = Path(tempfile.mkdtemp(prefix="runvisor-test-data-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the runs may write to (they run as an unprivileged user when the tests run
    as root), for files a test compares with what the service stored."""
    path = Path(tempfile.mkdtemp(prefix="runvisor-test-shared-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def live(redis_server_url: str, redis_prefix: str) -> Iterator[LiveState]:
    """The live state on the test's Redis, under its own key prefix."""
    live = LiveState(redis_client(redis_server_url), RedisKeys(redis_prefix))
    yield live
    live.close()
