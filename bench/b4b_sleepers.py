"""B4b: N runs of `sleep S` started at once (200 x sleep 2; 50 x sleep 1 quick): the time from
sending the first POST to seeing all of them terminal. Raw limit: S itself."""

from __future__ import annotations

import asyncio
import time

from bench.client import connect, expect_succeeded
from bench.context import Context
from bench.errors import Misbehaved
from bench.machine import loadavg
from bench.report import Figure
from bench.stats import median

POLL_S = 0.02


async def measure(ctx: Context) -> list[Figure]:
    n, sleep_s = ctx.sizes.b4b_runs, ctx.sizes.b4b_sleep_s
    walls: list[float] = []
    for repeat in range(ctx.sizes.b4b_repeats):
        # A command per repeat: "all terminal" counts this repeat's runs only.
        command_id = int(
            ctx.node.api.create_command(f"sleep {sleep_s}", name=f"bench-b4b-{repeat + 1}")["id"]
        )
        async with connect(ctx.node.base_url, ctx.node.token, n) as api:  # every POST at once
            t0 = time.perf_counter()
            await asyncio.gather(*(api.start_run(command_id) for _ in range(n)))
            t_posts = time.perf_counter() - t0
            while await api.count_runs(command_id, "terminal") < n:
                if time.perf_counter() - t0 > sleep_s + 120:
                    raise Misbehaved(f"B4b: not all {n} runs of `sleep {sleep_s}` ended in 120 s")
                await asyncio.sleep(POLL_S)
            walls.append(time.perf_counter() - t0)
            for run in await api.runs_of(command_id):
                expect_succeeded(run, "B4b")
        print(
            f"   repeat {repeat + 1}: all {n} POSTs answered after {t_posts:.2f} s, all"
            f" terminal after {walls[-1]:.2f} s; load average {loadavg()}",
            flush=True,
        )
    detail = f"{n} x sleep {sleep_s} at once; raw: the sleep itself"
    return [Figure("B4b all terminal", "s", median(walls), float(sleep_s), len(walls), detail)]
