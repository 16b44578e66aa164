"""Liveness, readiness and the OpenAPI document: open routes, no token needed."""

from __future__ import annotations

import asyncio

import psycopg
import redis.asyncio as aioredis
from aiohttp import web

from runvisor import __version__
from runvisor.errors import StoreUnavailable
from runvisor.http.appkeys import HISTORY, ISOLATION, REDIS, SETTINGS
from runvisor.http.openapi import build_openapi

READY_TIMEOUT_S = 2.0


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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
    return web.json_response(
        {
            "status": "ready" if ready else "unavailable",
            "stores": stores,
            "runs": request.app[ISOLATION].describe(),
        },
        status=200 if ready else 503,
    )


def down_reason(exc: BaseException) -> str:
    """Why a store is down, never empty: a timeout or a bare ConnectionError has no text."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if text:
        return text.splitlines()[0]
    if isinstance(exc, TimeoutError):  # asyncio.wait_for's own
        return f"TimeoutError: no answer within {READY_TIMEOUT_S:g} s"
    return type(exc).__name__


async def openapi(request: web.Request) -> web.Response:
    document = build_openapi(
        version=__version__, max_page_limit=request.app[SETTINGS].max_page_limit
    )
    return web.json_response(document)


HANDLERS = {"healthz": healthz, "readyz": readyz, "getOpenapi": openapi}
