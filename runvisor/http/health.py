"""Liveness, readiness and the OpenAPI document: open routes, no token needed."""

from __future__ import annotations

import asyncio

import psycopg
import redis.asyncio as aioredis
from aiohttp import web

from runvisor.errors import StoreUnavailable
from runvisor.http.appkeys import HISTORY, ISOLATION, OPENAPI, REDIS
from runvisor.http.probe_responses import Health, Isolation, Readiness

READY_TIMEOUT_S = 2.0


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response(Health(status="ok").to_json())


async def readyz(request: web.Request) -> web.Response:
    """200 when PostgreSQL and Redis answer; 503 naming the store that does not."""
    stores: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[HISTORY].ping(), READY_TIMEOUT_S)
        stores["postgres"] = "ok"
    except (StoreUnavailable, psycopg.Error, OSError, TimeoutError) as exc:
        stores["postgres"] = f"down: {down_reason(exc)}"
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), READY_TIMEOUT_S)
        stores["redis"] = "ok"
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        stores["redis"] = f"down: {down_reason(exc)}"
    ready = all(v == "ok" for v in stores.values())
    body = Readiness(
        status="ready" if ready else "unavailable",
        stores=stores,
        runs=Isolation.model_validate(request.app[ISOLATION].describe()),
    )
    return web.json_response(body.to_json(), status=200 if ready else 503)


def down_reason(exc: BaseException) -> str:
    """Why a store is down, never empty: a timeout or a bare ConnectionError has no text."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if text:
        return text.splitlines()[0]
    if isinstance(exc, TimeoutError):  # asyncio.wait_for's own
        return f"TimeoutError: no answer within {READY_TIMEOUT_S:g} s"
    return type(exc).__name__


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])  # built with the app (app.py)
