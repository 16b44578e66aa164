"""GET /metrics: the node's metrics in Prometheus's text format (runvisor/metrics.py)."""

from __future__ import annotations

from aiohttp import web

from runvisor.http.appkeys import METRICS, QUEUED_RUNS
from runvisor.metrics import CONTENT_TYPE


async def metrics_text(request: web.Request) -> web.Response:
    queued = await request.app[QUEUED_RUNS].count()
    body = request.app[METRICS].exposition(queued_runs=queued)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
