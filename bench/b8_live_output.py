"""B8: live output latency, from a byte written by a run to the same byte read from its SSE
stream (GET /api/v1/runs/{id}/events), p50 and p99. Each measured run prints its wall clock
(`$EPOCHREALTIME`, no fork) every 0.1 s; a client per run reads its events as an EventSource
does (tests/sse_spec.py) and takes, for each whole line, the time it was read less the time it
was written (same machine, same clock). Lines written in the stream's first second are not
counted: before that they were output so far, not live output, and the node running the run
notices a new follower within 0.5 s (until then its output comes after the PostgreSQL flush).

At light load: MEASURED runs alone. Under load: the same with N more runs printing a line every
0.5 s each (B4's runs; 1000, 100 quick) started first. Raw limit: none (a pipe between two
processes on the machine takes microseconds; the figure is the live path's own)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from bench.b4_many_runs import CODE as BUSY_CODE
from bench.client import AsyncApi, connect
from bench.context import Context
from bench.errors import Misbehaved
from bench.report import Figure
from bench.stats import ms, percentile
from tests.sse_spec import SseReader

MEASURED = 4  # measured runs (and streams) at once: under the per-token live stream limit
PERIOD_S = 0.1
POSTS_IN_FLIGHT = 16  # the busy runs' starts: more at once only queue in the node's pool
WARM_UP_S = 1.0
CLOCK_CODE = (
    'exec 3<> <(:); for ((i = 1; i <= {lines}; i++)); do echo "t $EPOCHREALTIME";'
    " read -t {period} -u 3 || :; done"
)


async def follow(api: AsyncApi, run_id: int, latencies: list[float]) -> None:
    """Read the run's events to `end`, adding one latency per whole line written from a second
    after the stream's first event on."""
    reader, partial, since = SseReader(), "", None
    url = f"{api.base}/api/v1/runs/{run_id}/events"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with api.session.get(url, headers=api.headers, timeout=timeout) as response:
        if response.status != 200:
            raise Misbehaved(f"B8: GET events of run {run_id}: HTTP {response.status}")
        async for chunk in response.content.iter_any():
            now = time.time()
            for event in reader.feed(chunk):
                if since is None:
                    since = now + WARM_UP_S
                if event.type == "end":
                    return
                if event.type != "output":
                    continue
                lines = (partial + json.loads(event.data)).split("\n")
                partial = lines.pop()
                for line in lines:
                    written = float(line.removeprefix("t "))
                    if written >= since:
                        latencies.append(now - written)
    raise Misbehaved(f"B8: the events of run {run_id} ended without an `end` event")


async def measured_runs(api: AsyncApi, command_id: int) -> list[float]:
    latencies: list[float] = []
    runs = [await api.start_run(command_id) for _ in range(MEASURED)]
    await asyncio.gather(*(follow(api, int(run["id"]), latencies) for run in runs))
    return latencies


async def measure(ctx: Context) -> list[Figure]:
    n, seconds = ctx.sizes.b8_runs, ctx.sizes.b8_seconds
    code = CLOCK_CODE.format(lines=int(seconds / PERIOD_S), period=PERIOD_S)
    command_id = int(ctx.node.api.create_command(code, name="bench-b8")["id"])
    # The busy runs outlast their own start (1000 take a while) and the measured runs after it.
    busy_lines = 2 * (seconds + 60 + n // 10)
    busy_id = int(ctx.node.api.create_command(BUSY_CODE.format(lines=busy_lines))["id"])
    async with connect(ctx.node.base_url, ctx.node.token, 64) as api:
        light = await measured_runs(api, command_id)
        starting = asyncio.Semaphore(POSTS_IN_FLIGHT)

        async def start() -> int:
            async with starting:
                return int((await api.start_run(busy_id))["id"])

        busy = await asyncio.gather(*(start() for _ in range(n)))
        deadline = time.perf_counter() + 60 + n * 0.1
        while await api.count_runs(busy_id, "active") - await api.count_runs(busy_id, "queued") < n:
            if time.perf_counter() > deadline:
                raise Misbehaved(f"B8: {n} runs were not all running within the deadline")
            await asyncio.sleep(0.5)
        loaded = await measured_runs(api, command_id)
        stopping = asyncio.Semaphore(32)

        async def stop(run_id: int) -> None:
            async with stopping:
                await api.call("POST", f"/api/v1/runs/{run_id}/stop", 202, json={"grace_s": 0})

        await asyncio.gather(*(stop(int(run_id)) for run_id in busy))
    if not light or not loaded:
        raise Misbehaved("B8: no live line was read")
    print(
        f"   {len(light)} lines read live at light load, {len(loaded)} with {n} runs printing",
        flush=True,
    )
    detail = f"{MEASURED} runs printing every {PERIOD_S} s, an SSE stream each"
    return [
        Figure("B8 SSE latency p50", "ms", ms(percentile(light, 50)), None, 1, detail),
        Figure("B8 SSE latency p99", "ms", ms(percentile(light, 99)), None, 1, detail),
        Figure(
            "B8 SSE latency p50 (load)",
            "ms",
            ms(percentile(loaded, 50)),
            None,
            1,
            f"{detail}, with {n} more runs printing",
        ),
        Figure(
            "B8 SSE latency p99 (load)",
            "ms",
            ms(percentile(loaded, 99)),
            None,
            1,
            f"{detail}, with {n} more runs printing",
        ),
    ]
