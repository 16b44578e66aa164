"""B4 and B7: N runs at once (1000; 100 quick), each printing a line every 0.5 s for T s (60;
10 quick). While all of them run: the node's CPU (utime + stime, % of one core), the latency of
GET /api/v1/runs/{id}, /healthz and /readyz (B7); over the whole benchmark the node's peak RSS and
the pool warnings in its log; afterwards, every line of every run checked in the stored output.
Raw limits of the latencies: the same requests to the idle node just before."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from bench.client import AsyncApi, connect
from bench.context import Context
from bench.errors import Misbehaved
from bench.machine import loadavg
from bench.node import is_pool_trouble
from bench.report import Figure
from bench.stats import ms, percentile

# `read -t` on a pipe nobody writes to waits without forking a `sleep` per line: the load is
# the node's, not thousands of forks per second of the runs themselves.
CODE = (
    'exec 3<> <(:); for ((i = 1; i <= {lines}; i++)); do echo "line $i"; read -t 0.5 -u 3 || :;'
    " done"
)
IDLE_SAMPLES = 50
PROBE_PERIOD_S = {"run": 0.02, "healthz": 0.1, "readyz": 0.1}
POSTS_IN_FLIGHT = 64


async def probe(
    api: AsyncApi, paths: Callable[[], str], open_route: bool, until: float, period_s: float
) -> list[float]:
    """Latencies of GET paths(), one request every `period_s`, until the perf_counter `until`."""
    latencies = []
    while time.perf_counter() < until:
        latencies.append(await api.timed_get(paths(), open_route))
        await asyncio.sleep(period_s)
    return latencies


async def idle_p99(api: AsyncApi, run_id: int) -> dict[str, float]:
    paths = {"run": f"/api/v1/runs/{run_id}", "healthz": "/healthz", "readyz": "/readyz"}
    result = {}
    for name, path in paths.items():
        samples = [await api.timed_get(path, name != "run") for _ in range(IDLE_SAMPLES)]
        result[name] = ms(percentile(samples, 99))
    return result


async def measure(ctx: Context) -> list[Figure]:
    n, seconds = ctx.sizes.b4_runs, ctx.sizes.b4_seconds
    lines = 2 * seconds
    expected = b"".join(b"line %d\n" % i for i in range(1, lines + 1))
    command_id = int(ctx.node.api.create_command(CODE.format(lines=lines), name="bench-b4")["id"])
    idle_run = ctx.node.api.run_code("true")["id"]
    ctx.node.api.wait_finished(idle_run)
    async with connect(ctx.node.base_url, ctx.node.token, POSTS_IN_FLIGHT) as api:
        raw = await idle_p99(api, idle_run)
        log_offset = ctx.node.log_size()
        async with ctx.node.rss_peak(0.2) as rss:
            t_first = time.perf_counter()
            ids = [
                r["id"]
                for r in await asyncio.gather(*(api.start_run(command_id) for _ in range(n)))
            ]
            t_started = time.perf_counter()
            # No run ends before T s after the first POST: the window where all of them run.
            window_end = t_first + seconds - 0.5
            if window_end - t_started < 1.0:
                window_end = t_started + 1.0  # starting took longer than the runs: note it
                print(
                    "   the runs took longer to start than to run: CPU and latencies are"
                    " measured over the second after the last start",
                    flush=True,
                )
            cpu0, wall0 = ctx.node.cpu_s(), time.perf_counter()
            each_run = itertools.cycle(ids)
            probes = await asyncio.gather(
                probe(
                    api,
                    lambda: f"/api/v1/runs/{next(each_run)}",
                    False,
                    window_end,
                    PROBE_PERIOD_S["run"],
                ),
                probe(api, lambda: "/healthz", True, window_end, PROBE_PERIOD_S["healthz"]),
                probe(api, lambda: "/readyz", True, window_end, PROBE_PERIOD_S["readyz"]),
            )
            cpu_pct = (ctx.node.cpu_s() - cpu0) / (time.perf_counter() - wall0) * 100
            deadline = time.perf_counter() + seconds + 120 + n * 0.1
            while await api.count_runs(command_id, "terminal") < n:
                if time.perf_counter() > deadline:
                    raise Misbehaved(f"B4: not all {n} runs ended within the deadline")
                await asyncio.sleep(0.5)
            t_all = time.perf_counter() - t_first
        warnings = ctx.node.count_in_log(is_pool_trouble, since=log_offset)
        stored = await lines_stored(ctx, api, command_id, expected)
    run_p99, health_p99, ready_p99 = (ms(percentile(p, 99)) for p in probes)
    print(
        f"   {n} runs started in {t_started - t_first:.2f} s, all ended after {t_all:.2f} s"
        f" (each runs {seconds} s); {len(probes[0])} GETs of a run meanwhile;"
        f" RSS {rss.before_mib:.0f} → peak {rss.peak_mib:.0f} MiB; load average {loadavg()}",
        flush=True,
    )
    detail = f"{n} runs x {seconds} s; raw: the same request to the idle node"
    return [
        Figure("B4 lines stored", "lines", stored, n * lines, 1, f"{n} runs x {lines} lines"),
        Figure("B4 RSS", "MiB", rss.peak_mib, None, 1, f"peak; {rss.before_mib:.0f} MiB before"),
        Figure("B4 CPU", "%", cpu_pct, None, 1, "utime + stime of the node, % of one core"),
        Figure("B4 GET run p99", "ms", run_p99, raw["run"], 1, detail),
        Figure("B7 /healthz p99", "ms", health_p99, raw["healthz"], 1, detail),
        Figure("B7 /readyz p99", "ms", ready_p99, raw["readyz"], 1, detail),
        Figure("B7 pool warnings", "", warnings, None, 1, "lines of the node's log during B4"),
    ]


async def lines_stored(ctx: Context, api: AsyncApi, command_id: int, expected: bytes) -> int:
    """Lines stored in order by every run together; a run that did not succeed or lost a line
    is reported as the service misbehaving (and the bench goes on)."""
    runs = await api.runs_of(command_id)
    reading = asyncio.Semaphore(8)  # under the per-token limit of output streams

    async def stored(run: dict[str, object]) -> int:
        async with reading:
            output = await api.output(int(str(run["id"])))
        got, want = output.splitlines(), expected.splitlines()
        same = sum(1 for a, b in zip(got, want, strict=False) if a == b)
        if run["status"] != "succeeded" or output != expected:
            ctx.failures.append(
                f"B4: run {run['id']} ended {run['status']}, {same} of {len(want)} lines stored"
            )
        return same

    return sum(await asyncio.gather(*(stored(run) for run in runs)))
