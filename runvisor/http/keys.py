"""Typed keys of the aiohttp application."""

from __future__ import annotations

from typing import Any

import pykka
import redis.asyncio as aioredis
from aiohttp import web

from runvisor.actors.isolation import RunIsolation
from runvisor.config import Settings
from runvisor.http.auth import Principal, TokenTable
from runvisor.http.streams import StreamSlots
from runvisor.store.history import History
from runvisor.supervisor.control import RunControl

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenTable)
SUPERVISOR = web.AppKey("supervisor", pykka.ActorProxy[Any])
HISTORY = web.AppKey("history", History)
REDIS = web.AppKey("redis", aioredis.Redis)
CONTROL = web.AppKey("control", RunControl)
ISOLATION = web.AppKey("isolation", RunIsolation)
STREAMS = web.AppKey("streams", StreamSlots)

# Per request (request[...]): who is asking.
PRINCIPAL = "runvisor.principal"


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal
