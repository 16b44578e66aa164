"""Start-up and shutdown of a node, as small ordered steps.

Each step registers its own stop on one ExitStack, so whatever started is stopped in reverse
order in a `finally`, however start-up or the service ends. The last stop is
ActorRegistry.stop_all(): a non-daemon actor thread left running would keep the process alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pykka
import uvloop
from aiohttp import web

from runvisor import __version__
from runvisor.actors.deps import RunDeps
from runvisor.actors.output_flusher import OutputFlusher
from runvisor.actors.thread_starter import ThreadStarter
from runvisor.actors.timer import TimerService
from runvisor.config import Settings
from runvisor.errors import SettingsError
from runvisor.http.app import create_app
from runvisor.http.auth import TokenTable, generate_admin_token, parse_tokens
from runvisor.logs import get_logger
from runvisor.procs.exit_watcher import ExitWatcher
from runvisor.procs.isolation import RunIsolation, choose_process_tracking
from runvisor.procs.proctree import enable_child_subreaper
from runvisor.procs.run_uids import UidPool, check_uid_range
from runvisor.procs.run_user import RunUser, resolve_run_user
from runvisor.procs.spool import SpoolLayout
from runvisor.protocol import SupervisorProxy, supervisor_proxy
from runvisor.store.journal import open_journal
from runvisor.store.live import LiveState, redis_client
from runvisor.store.migrate import apply_migrations
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.actor import Supervisor
from runvisor.supervisor.control_listener import ControlListener
from runvisor.supervisor.node_presence import NodePresence
from runvisor.supervisor.shutdown import drain_before_exit, record_shutdown

log = get_logger("runvisor.service")
MIGRATE_WAIT_S = 60.0  # how long start-up waits for an external PostgreSQL to come up
# The GIL goes to a waiting thread after 2 ms, not 5 (/healthz p99 under B4: 118 -> 68 ms).
GIL_SWITCH_INTERVAL_S = 0.002
ADMIN_TOKEN_FILE = "admin.token"


def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT. Runs are then left running and adopted at the next
    start, or drained (RUNVISOR_ON_SHUTDOWN)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Until aiohttp's handler, SIGTERM unwinds start-up as Ctrl-C does: nothing is orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_all_actors)
        check_data_dir(settings)  # first: bad settings are reported before anything starts
        check_listen_address(settings)
        tokens = load_tokens(settings)
        isolation = isolate_runs(settings)
        if isolation.cgroups is not None:
            stack.callback(isolation.cgroups.remove_if_unused)
        database_url, redis_url = start_stores(settings, stack)
        assert redis_url is not None
        migrate(database_url)
        secure_data_dir(settings, isolation.run_user)
        if not enable_child_subreaper():
            log.warning("not a child subreaper: orphaned grandchildren may escape a stop")
        deps = start_run_services(settings, database_url, redis_url, isolation, stack)
        # Registered (state `up`) before the Supervisor reads back a drain of a previous run.
        start_node_presence(deps, stack)
        supervisor = start_supervisor(deps, stack)
        start_control_listener(settings, deps.live, supervisor, stack)
        app = create_app(
            settings,
            supervisor=supervisor,
            tokens=tokens,
            database_url=database_url,
            redis_url=redis_url,
            isolation=isolation,
        )
        log.info("serving", host=settings.host, port=settings.port, node=settings.node_id)
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            shutdown_timeout=5.0,
            handle_signals=True,
            loop=uvloop.new_event_loop(),  # libuv's: requests cost less CPU (GET: -15 %)
        )
        log.info("shutting down", on_shutdown=settings.on_shutdown)


def _stop_all_actors() -> None:
    """The last stop. Bounded: an actor wedged in a store call must not keep the node alive
    (RunActors run on daemon threads, so the process can exit past one)."""
    try:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
    except pykka.Timeout:
        log.warning("some actors did not stop in time; exiting anyway")


def check_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(f"RUNVISOR_DATA_DIR={settings.data_dir}: {exc.strerror}") from None


def check_listen_address(settings: Settings) -> None:
    """Fail at once, naming the setting, if the HTTP address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f"RUNVISOR_HOST={settings.host} / RUNVISOR_PORT={settings.port}"
        raise SettingsError(f"{where}: cannot listen: {reason}") from None


def isolate_runs(settings: Settings) -> RunIsolation:
    """Who runs execute as (RUNVISOR_RUN_AS, or a uid per attempt with RUNVISOR_RUN_UIDS) and
    whether each attempt gets a cgroup."""
    run_uids: UidPool | None = None
    if settings.run_uids is not None:
        setpriv = check_uid_range(settings.run_uids, run_as=settings.run_as)
        run_uids = UidPool(
            settings.run_uids,
            setpriv=setpriv,
            spool=SpoolLayout(settings.spool_dir, settings.work_dir),
        )
        run_user = run_uids.user(settings.run_uids.first)
    else:
        run_user = resolve_run_user(settings.run_as)
    if run_uids is not None:
        log.info("each attempt runs as a uid of its own", uids=str(settings.run_uids))
    elif run_user.uid == 0:
        level = log.warning if settings.run_as else log.info
        level(
            "runs execute as root: a run can read the service's tokens and data and stop it",
            run_as=settings.run_as,
        )
    elif not run_user.switches:
        log.info(
            "runs execute as the service's own user: no isolation between runs and the service",
            user=run_user.describe(),
        )
    cgroups, reason = choose_process_tracking(settings.process_tracking, settings.node_id)
    if not settings.run_limits and not (cgroups and cgroups.controllers):
        log.warning(
            "runs have no resource limits: a fork bomb or a memory hog reaches the whole "
            "machine; set RUNVISOR_RUN_LIMITS (e.g. nproc=1024,as=4G)"
        )
    isolation = RunIsolation(
        run_user=run_user, cgroups=cgroups, no_cgroup_reason=reason, run_uids=run_uids
    )
    log.info("run isolation", **isolation.describe())
    return isolation


def secure_data_dir(settings: Settings, run_user: RunUser) -> None:
    """The data dir and spool only for the service; work/ only traversable, so that a run user
    reaches its own working directory (0700, its own) and can list nothing else there."""
    traversable = 0o711 if run_user.switches else 0o700
    settings.spool_dir.mkdir(mode=0o700, exist_ok=True)
    settings.work_dir.mkdir(mode=traversable, exist_ok=True)
    # 0711 even without a run user: the embedded PostgreSQL runs as its own user under it.
    for path, mode in (
        (settings.data_dir, 0o711),
        (settings.spool_dir, 0o700),
        (settings.work_dir, traversable),
    ):
        try:
            path.chmod(mode)
        except OSError as exc:  # not ours (a shared mount, say): say so, do not refuse to start
            why = {"path": str(path), "mode": oct(mode), "error": exc.strerror}
            log.warning("cannot set the mode of a data directory", **why)
    if run_user.switches:
        blocked = _untraversable_ancestor(settings.data_dir, run_user)
        if blocked is not None:
            log.warning(
                "the run user cannot reach the runs' working directories by their absolute "
                "path; runs start in them, but tools that re-open $PWD fail",
                blocked_at=str(blocked),
                user=run_user.describe(),
            )


def _untraversable_ancestor(path: Path, user: RunUser) -> Path | None:
    for ancestor in reversed(path.resolve().parents):
        st = ancestor.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return ancestor
    return None


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def start_stores(
    settings: Settings, stack: contextlib.ExitStack, *, redis: bool = True
) -> tuple[str, str | None]:
    """The configured PostgreSQL and Redis URLs, or embedded servers under the data dir."""
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or (redis and redis_url is None):
        from runvisor.embedded import EmbeddedPostgres, EmbeddedRedis

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if database_url is None:
            postgres = EmbeddedPostgres(settings.data_dir)
            database_url = postgres.start()
            stack.callback(postgres.stop)
            log.info("embedded PostgreSQL started", data_dir=str(settings.data_dir))
        if redis and redis_url is None:
            valkey = EmbeddedRedis(settings.data_dir)
            redis_url = valkey.start()
            stack.callback(valkey.stop)
            log.info("embedded Redis (Valkey) started", data_dir=str(settings.data_dir))
    return database_url, redis_url


def migrate(database_url: str, wait_s: float = MIGRATE_WAIT_S) -> list[str]:
    """Apply migrations, waiting a while for PostgreSQL (compose starts everything at once)."""
    import psycopg

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return apply_migrations(database_url)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SettingsError(
                    f"RUNVISOR_DATABASE_URL: PostgreSQL is unreachable: {str(exc).strip()}"
                ) from None
            log.warning("waiting for PostgreSQL", error=str(exc).strip().splitlines()[0])
            time.sleep(1.0)


def load_tokens(settings: Settings) -> TokenTable:
    """RUNVISOR_TOKENS, RUNVISOR_TOKENS_FILE, or a generated admin token: DATA_DIR/admin.token."""
    if settings.tokens_file is not None:
        if settings.tokens is not None:
            raise SettingsError("RUNVISOR_TOKENS and RUNVISOR_TOKENS_FILE: set one, not both")
        return load_tokens_file(settings.tokens_file)
    if settings.tokens is not None:
        table = parse_tokens(settings.tokens)
        if len(table) == 0:
            log.warning("RUNVISOR_TOKENS is set but empty: every request needing a token is denied")
        return table
    path = settings.data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_admin_token() + "\n")
        log.info("generated an admin token", file=str(path))
    token = Path(path).read_text().strip()
    log.info("RUNVISOR_TOKENS is not set; the admin token is in the data dir", file=str(path))
    return parse_tokens(f"admin:{token}")


def load_tokens_file(path: Path) -> TokenTable:
    """`role:token` entries, one per line or comma-separated; `#` starts a comment line."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(f"RUNVISOR_TOKENS_FILE={path}: cannot read: {reason}") from None
    if st.st_mode & 0o077:
        log.warning(
            "RUNVISOR_TOKENS_FILE can be read by other users; make it 0600 (or 0400)",
            file=str(path),
            mode=oct(stat.S_IMODE(st.st_mode)),
        )
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    table = parse_tokens(",".join(lines), setting="RUNVISOR_TOKENS_FILE")
    if len(table) == 0:
        log.warning("RUNVISOR_TOKENS_FILE holds no token: every request needing one is denied")
    return table


def start_run_services(
    settings: Settings,
    database_url: str,
    redis_url: str,
    isolation: RunIsolation,
    stack: contextlib.ExitStack,
) -> RunDeps:
    timers = TimerService()
    timers.start()
    stack.callback(timers.stop)
    watcher = ExitWatcher()
    watcher.start()
    stack.callback(watcher.stop)
    store_waits = StoreWaits()
    journal = open_journal(
        database_url,
        node_id=settings.node_id,
        node_labels=settings.node_labels,
        store_waits=store_waits,
    )
    stack.callback(journal.close)
    live = LiveState(
        redis_client(redis_url), RedisKeys(settings.redis_prefix), store_waits=store_waits
    )
    live.publish_in_background()  # a RunActor never waits on Redis for its live view
    stack.callback(live.close)
    flusher = OutputFlusher(journal, live, flush_interval_s=settings.flush_interval_s)
    flusher.start()
    stack.callback(flusher.stop)  # before the live state and the journal it works through
    starter = ThreadStarter()  # stopped after the Supervisor, which starts RunActors with it
    stack.callback(starter.stop)
    return RunDeps(
        settings=settings,
        journal=journal,
        live=live,
        timers=timers,
        watcher=watcher,
        flusher=flusher,
        store_waits=store_waits,
        run_user=isolation.run_user,
        cgroups=isolation.cgroups,
        run_uids=isolation.run_uids,
        starter=starter,
    )


def start_supervisor(deps: RunDeps, stack: contextlib.ExitStack) -> SupervisorProxy:
    ref = Supervisor.start(deps=deps)
    settings = deps.settings

    def stop() -> None:
        proxy = supervisor_proxy(ref)
        if settings.on_shutdown == "drain":
            drain_before_exit(
                proxy, timeout_s=settings.drain_timeout_s, grace_s=settings.default_grace_s
            )
        left = 1  # unknown: assume runs go on
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            left = proxy.active_count().get(timeout=10)
            detached = proxy.detach_all().get(timeout=15)
            log.info("run actors detached", runs=detached)
        # Before the lease stops being renewed (on_stop): no gap for a takeover of the runs.
        record_shutdown(deps, detached=left > 0, detach_ttl_s=settings.detach_ttl_s)
        ref.stop(block=True, timeout=10)

    stack.callback(stop)
    proxy = supervisor_proxy(ref)
    proxy.running_count().get(timeout=10)  # a ping: the Supervisor is up and has recovered
    return proxy


def start_control_listener(
    settings: Settings,
    live: LiveState,
    supervisor: SupervisorProxy,
    stack: contextlib.ExitStack,
) -> None:
    listener = ControlListener(live=live, node_id=settings.node_id, supervisor=supervisor)
    listener.start()
    stack.callback(listener.stop)


def start_node_presence(deps: RunDeps, stack: contextlib.ExitStack) -> None:
    """This node's row in `nodes`: registered now, seen every second (node_presence.py)."""
    presence = NodePresence(
        registry=deps.journal.nodes,
        live=deps.live,
        node_id=deps.settings.node_id,
        labels=deps.settings.node_labels,
        version=__version__,
        capacity=deps.settings.max_running,
        mechanism="cgroup" if deps.cgroups is not None else "scan",
    )
    presence.start()
    stack.callback(presence.stop)
