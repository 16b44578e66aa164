"""B2: latency at light load. One client, one run at a time: the 202 answer to POST …/runs, and
the round trip from sending it to a GET that shows the run terminal (polled every
millisecond). Raw limit: the round trip of `subprocess.run(["bash", "-c", "echo hi"])`, one at a
time."""

from __future__ import annotations

import asyncio
import time

from bench.client import connect, expect_succeeded
from bench.context import Context
from bench.load import raw_echo
from bench.machine import loadavg
from bench.report import Figure
from bench.stats import median, ms, percentile

WARM_UP_RUNS = 3


def raw_round_trips(count: int) -> list[float]:
    trips = []
    for _ in range(count):
        t0 = time.perf_counter()
        raw_echo()
        trips.append(time.perf_counter() - t0)
    return trips


async def measure(ctx: Context) -> list[Figure]:
    sizes = ctx.sizes
    command_id = int(ctx.node.api.create_command("echo hi", name="bench-b2")["id"])
    per_repeat: dict[str, list[float]] = {
        key: [] for key in ("raw50", "raw99", "acc50", "acc99", "rt50", "rt99")
    }
    async with connect(ctx.node.base_url, ctx.node.token, 1) as api:
        for _ in range(WARM_UP_RUNS):
            await api.start_and_wait(command_id, sizes.b2_poll_s, sizes.b2_max_poll_s)
        for repeat in range(sizes.b2_repeats):
            raw = await asyncio.to_thread(raw_round_trips, sizes.b2_runs)
            accepts, trips, polls = [], [], 0
            for _ in range(sizes.b2_runs):
                finished = await api.start_and_wait(
                    command_id, sizes.b2_poll_s, sizes.b2_max_poll_s
                )
                expect_succeeded(finished.run, "B2")
                accepts.append(finished.accept_s)
                trips.append(finished.round_trip_s)
                polls += finished.polls
            samples = {"raw": raw, "acc": accepts, "rt": trips}
            for name, values in samples.items():
                per_repeat[f"{name}50"].append(ms(percentile(values, 50)))
                per_repeat[f"{name}99"].append(ms(percentile(values, 99)))
            print(
                f"   repeat {repeat + 1}: raw p50 {per_repeat['raw50'][-1]:.2f} ms;"
                f" 202 p50/p99 {per_repeat['acc50'][-1]:.2f}/{per_repeat['acc99'][-1]:.2f} ms;"
                f" start → terminal p50/p99 {per_repeat['rt50'][-1]:.2f}/"
                f"{per_repeat['rt99'][-1]:.2f} ms ({polls / sizes.b2_runs:.1f} polls per run);"
                f" load average {loadavg()}",
                flush=True,
            )
    m = {key: median(values) for key, values in per_repeat.items()}
    n = sizes.b2_repeats
    detail = f"{sizes.b2_runs} serial runs per repeat; raw: serial subprocess.run"
    return [
        Figure("B2 202 answer p50", "ms", m["acc50"], m["raw50"], n, detail),
        Figure("B2 202 answer p99", "ms", m["acc99"], m["raw99"], n, detail),
        Figure("B2 start → terminal p50", "ms", m["rt50"], m["raw50"], n, detail),
        Figure("B2 start → terminal p99", "ms", m["rt99"], m["raw99"], n, detail),
    ]
