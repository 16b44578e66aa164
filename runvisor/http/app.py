"""The aiohttp application factory: one route table, typed app keys, stores in cleanup_ctx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from runvisor import __version__
from runvisor.config import Settings
from runvisor.http.appkeys import (
    CONTROL,
    HISTORY,
    ISOLATION,
    LIVE_HUB,
    LIVE_STREAMS,
    METRICS,
    NODE_LEASES,
    OPENAPI,
    QUEUED_RUNS,
    REDIS,
    RUN_WAITS,
    SETTINGS,
    STREAMS,
    SUPERVISOR,
    TOKENS,
)
from runvisor.http.auth import TokenTable
from runvisor.http.control import RunControl
from runvisor.http.fleet import NodeLeases
from runvisor.http.live_hub import LiveHub
from runvisor.http.live_hub import listening as hub_listening
from runvisor.http.live_streams import MAX_LIVE_STREAMS
from runvisor.http.middleware import OPERATION_ID, authenticate, errors, request_log
from runvisor.http.openapi import build_openapi
from runvisor.http.queued_runs import QueuedRuns
from runvisor.http.routes import ROUTE_TABLE
from runvisor.http.run_waits import RunWaits, listening
from runvisor.http.streams import StreamSlots
from runvisor.metrics import MetricsRegistry
from runvisor.procs.isolation import RunIsolation
from runvisor.protocol import SupervisorProxy
from runvisor.store.history import open_history
from runvisor.store.live import LiveState, redis_client
from runvisor.store.redis_keys import RedisKeys


def create_app(
    settings: Settings,
    *,
    supervisor: SupervisorProxy,
    tokens: TokenTable,
    database_url: str,
    redis_url: str,
    isolation: RunIsolation,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_log, errors, authenticate],
    )
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[SUPERVISOR] = supervisor
    app[ISOLATION] = isolation
    app[STREAMS] = StreamSlots(
        max_streams=settings.max_output_streams,
        max_per_token=settings.max_output_streams_per_token,
    )
    app[LIVE_STREAMS] = StreamSlots(
        max_streams=MAX_LIVE_STREAMS,
        max_per_token=settings.max_live_streams_per_token,
        what="live streams",
        node_limit=f"at most {MAX_LIVE_STREAMS} per node",
        token_limit="RUNVISOR_MAX_LIVE_STREAMS_PER_TOKEN",
    )
    app[OPENAPI] = build_openapi(version=__version__, max_page_limit=settings.max_page_limit)
    app[METRICS] = MetricsRegistry()
    app.cleanup_ctx.append(_stores(database_url, redis_url))
    app.on_shutdown.append(_end_live_streams)
    add_routes(app)
    return app


def add_routes(app: web.Application) -> None:
    """Register every route of the route table, named by its operationId."""
    for route in ROUTE_TABLE:
        setattr(route.handler, OPERATION_ID, route.operation_id)
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)


async def _end_live_streams(app: web.Application) -> None:
    """The node stops: live streams end now rather than hold the shutdown up."""
    if LIVE_HUB in app:
        app[LIVE_HUB].close()


def _stores(database_url: str, redis_url: str) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        redis = aioredis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        # Stops for runs of other nodes go through LiveState, as the receiving end reads them.
        live = LiveState(redis_client(redis_url), RedisKeys(settings.redis_prefix))
        try:
            async with (
                contextlib.AsyncExitStack() as stack,
                open_history(
                    database_url, default_max_output_bytes=settings.max_output_bytes
                ) as history,
            ):
                app[HISTORY] = history
                app[QUEUED_RUNS] = QueuedRuns(history)
                app[REDIS] = redis
                app[NODE_LEASES] = NodeLeases(redis, RedisKeys(settings.redis_prefix))
                waits = RunWaits(redis, RedisKeys(settings.redis_prefix).runs_ended())
                app[RUN_WAITS] = await stack.enter_async_context(listening(waits))
                hub = LiveHub(redis, RedisKeys(settings.redis_prefix))
                app[LIVE_HUB] = await stack.enter_async_context(hub_listening(hub))
                app[CONTROL] = RunControl(
                    history=history,
                    supervisor=app[SUPERVISOR],
                    live=live,
                    leases=app[NODE_LEASES],
                    node_id=settings.node_id,
                    default_grace_s=settings.default_grace_s,
                )
                yield
        finally:
            live.close()
            await redis.aclose()

    return ctx
