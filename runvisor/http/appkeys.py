"""Typed keys of the aiohttp application."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from runvisor.config import Settings
from runvisor.http.auth import Principal, TokenTable
from runvisor.http.control import RunControl
from runvisor.http.fleet import NodeLeases
from runvisor.http.live_hub import LiveHub
from runvisor.http.queued_runs import QueuedRuns
from runvisor.http.run_waits import RunWaits
from runvisor.http.streams import StreamSlots
from runvisor.metrics import MetricsRegistry
from runvisor.procs.isolation import RunIsolation
from runvisor.protocol import SupervisorProxy
from runvisor.store.history import History

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenTable)
SUPERVISOR = web.AppKey("supervisor", SupervisorProxy)
HISTORY = web.AppKey("history", History)
REDIS = web.AppKey("redis", aioredis.Redis)
CONTROL = web.AppKey("control", RunControl)
RUN_WAITS = web.AppKey("run_waits", RunWaits)
ISOLATION = web.AppKey("isolation", RunIsolation)
STREAMS = web.AppKey("streams", StreamSlots)
LIVE_STREAMS = web.AppKey("live_streams", StreamSlots)  # /events and ?follow=1
LIVE_HUB = web.AppKey("live_hub", LiveHub)
OPENAPI = web.AppKey("openapi", dict[str, Any])  # the document, built once per app
METRICS = web.AppKey("metrics", MetricsRegistry)
QUEUED_RUNS = web.AppKey("queued_runs", QueuedRuns)  # for /metrics, with the History
NODE_LEASES = web.AppKey("node_leases", NodeLeases)  # for /api/v1/nodes, with REDIS

# Per request (request[...]): who is asking.
PRINCIPAL = "runvisor.principal"


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal
