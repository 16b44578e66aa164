"""Fixtures for the Supervisor and its RunActors in the test process, with the real PostgreSQL
and Redis of the test (a database and a key prefix of its own) and no node around them: no
HTTP, no subprocess of runvisor. A test may start the Supervisor with a RunActor subclass of
its own, one that fails or stops answering as the service's never would on purpose."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pykka
import pytest

from runvisor.actors.deps import RunDeps
from runvisor.actors.output_flusher import OutputFlusher
from runvisor.actors.run_actor import RunActor
from runvisor.actors.thread_starter import ThreadStarter
from runvisor.actors.timer import TimerService
from runvisor.config import load_settings
from runvisor.models import Run, RunStatus
from runvisor.procs.exit_watcher import ExitWatcher
from runvisor.store.journal import open_journal
from runvisor.store.live import LiveState, redis_client
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.actor import Supervisor
from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.fix_service import kill_pids, processes_with_env

SupervisorProxy = pykka.ActorProxy[Supervisor]
StartSupervisor = Callable[..., SupervisorProxy]


@pytest.fixture
def journal_waits() -> StoreWaits | None:
    """Where the journal marks its calls; None: in the StoreWaits the watchdog reads, as in
    the service."""
    return None


@pytest.fixture
def ping_timeout_s() -> float:
    """RUNVISOR_PING_TIMEOUT_S of the test's node; short, so that a wedge is seen soon."""
    return 0.5


@pytest.fixture
def journal_through_proxy() -> bool:
    """Whether the journal reaches PostgreSQL through `pg_proxy`, which the test may cut."""
    return False


@pytest.fixture
def journal_url(
    request: pytest.FixtureRequest, database_url: str, journal_through_proxy: bool
) -> str:
    if not journal_through_proxy:
        return database_url
    proxy: TcpProxy = request.getfixturevalue("pg_proxy")
    return proxied_database_url(database_url, proxy)


@pytest.fixture
def deps(
    journal_url: str,
    redis_server_url: str,
    redis_prefix: str,
    data_dir: Path,
    journal_waits: StoreWaits | None,
    ping_timeout_s: float,
) -> Iterator[RunDeps]:
    settings = load_settings(
        {},
        data_dir=data_dir,
        node_id=f"in-process-{uuid.uuid4().hex[:8]}",
        redis_prefix=redis_prefix,
        flush_interval_s=0.05,
        ping_timeout_s=ping_timeout_s,
    )
    settings.spool_dir.mkdir(mode=0o700)
    settings.work_dir.mkdir(mode=0o711)
    store_waits = StoreWaits()
    journal = open_journal(
        journal_url, node_id=settings.node_id, store_waits=journal_waits or store_waits
    )
    timers, watcher, starter = TimerService(), ExitWatcher(), ThreadStarter()
    flusher = OutputFlusher(journal, flush_interval_s=settings.flush_interval_s)
    for service in (timers, watcher, flusher):
        service.start()
    live = LiveState(
        redis_client(redis_server_url), RedisKeys(redis_prefix), store_waits=store_waits
    )
    yield RunDeps(
        settings=settings,
        journal=journal,
        live=live,
        timers=timers,
        watcher=watcher,
        flusher=flusher,
        store_waits=store_waits,
        starter=starter,
    )
    for service in (starter, flusher, watcher, timers):
        service.stop()
    live.close()
    journal.close()
    # What a failed test left running (its RunActors gone) must not go on looping for hours.
    kill_pids(processes_with_env(f"RUNVISOR_NODE={settings.node_id}"))


@pytest.fixture
def start_supervisor(deps: RunDeps) -> Iterator[StartSupervisor]:
    """Start the Supervisor, with the service's RunActor or the test's subclass of it."""
    refs: list[pykka.ActorRef[Supervisor]] = []

    def start(run_actor_class: type[RunActor] = RunActor) -> SupervisorProxy:
        ref = Supervisor.start(deps=deps, run_actor_class=run_actor_class)
        refs.append(ref)
        return ref.proxy()

    yield start
    for ref in refs:
        ref.stop(block=True, timeout=10)


@pytest.fixture
def supervisor(start_supervisor: StartSupervisor) -> SupervisorProxy:
    return start_supervisor()


def queued_run(database_url: str, code: str, restart: dict[str, object]) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        command = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES (%s, 1000000) RETURNING id",
            (code,),
        ).fetchone()
        assert command is not None
        run = conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes, restart)"
            " VALUES (%s, %s, 1000000, %s) RETURNING id",
            (command[0], code, json.dumps(restart)),
        ).fetchone()
    assert run is not None
    return int(run[0])


def run_in(deps: RunDeps, run_id: int, *statuses: RunStatus) -> Run | None:
    run = deps.journal.get_run(run_id)
    return run if run is not None and run.status in statuses else None
