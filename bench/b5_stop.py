"""B5: N runs of a process that honours SIGTERM (`sleep 600`: 100; 20 quick) stopped at once.
The time from sending the first stop to the k-th run shown `stopped` (its p99), and the run
processes still alive afterwards (in /proc: their environment names the run). Raw limit: the
same number of `bash -c 'sleep 600'` processes sent SIGTERM at once, until each is reaped."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import psutil

from bench.client import AsyncApi, connect
from bench.context import Context
from bench.errors import Misbehaved
from bench.machine import loadavg
from bench.report import Figure
from bench.stats import median, ms, percentile

POLL_S = 0.005
CODE = "sleep 600"


def raw_stop_latencies(count: int) -> list[float]:
    procs = [subprocess.Popen(["bash", "-c", CODE]) for _ in range(count)]
    t0 = time.perf_counter()
    for proc in procs:
        proc.terminate()
    latencies = []
    for proc in procs:
        proc.wait()
        latencies.append(time.perf_counter() - t0)
    return latencies


def survivors(node_id: str, run_ids: set[int]) -> list[int]:
    """Live processes whose environment names this node and one of `run_ids` (killed)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            env = process.environ()
            run_id = env.get("RUNVISOR_RUN_ID", "")
            ours = env.get("RUNVISOR_NODE") == node_id and run_id.isdigit()
            if ours and int(run_id) in run_ids and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
                process.kill()
    return found


async def wait_all_running(api: AsyncApi, command_id: int, n: int) -> None:
    deadline = time.perf_counter() + 60 + n * 0.1
    while True:
        running = await api.runs_of(command_id, "running")
        if len(running) == n and all(run["pid"] for run in running):
            return
        if time.perf_counter() > deadline:
            raise Misbehaved(f"B5: {len(running)} of {n} runs running after the deadline")
        await asyncio.sleep(0.05)


async def stop_all(api: AsyncApi, command_id: int, ids: list[int]) -> list[float]:
    """Seconds from the first stop sent to each run seen stopped, in order."""
    t0 = time.perf_counter()
    stops = asyncio.gather(*(api.stop(run_id) for run_id in ids))
    seen: list[float] = []
    while len(seen) < len(ids):
        stopped = await api.count_runs(command_id, "stopped")
        now = time.perf_counter() - t0
        seen += [now] * (stopped - len(seen))
        if now > 60:
            raise Misbehaved(f"B5: {len(seen)} of {len(ids)} runs stopped after 60 s")
        await asyncio.sleep(POLL_S)
    await stops
    return seen


async def measure(ctx: Context) -> list[Figure]:
    n = ctx.sizes.b5_runs
    p99s: list[float] = []
    raw_p99s: list[float] = []
    left: list[int] = []
    for repeat in range(ctx.sizes.b5_repeats):
        raw_p99s.append(ms(percentile(await asyncio.to_thread(raw_stop_latencies, n), 99)))
        command_id = int(ctx.node.api.create_command(CODE, name=f"bench-b5-{repeat + 1}")["id"])
        async with connect(ctx.node.base_url, ctx.node.token, n) as api:
            ids = [
                r["id"]
                for r in await asyncio.gather(*(api.start_run(command_id) for _ in range(n)))
            ]
            await wait_all_running(api, command_id, n)
            latencies = await stop_all(api, command_id, ids)
            left += survivors(ctx.node.node_id, set(ids))
            statuses = {run["status"] for run in await api.runs_of(command_id)}
        if statuses != {"stopped"}:
            ctx.failures.append(f"B5: runs ended {sorted(statuses)}, not all stopped")
        p99s.append(ms(percentile(latencies, 99)))
        print(
            f"   repeat {repeat + 1}: stop → stopped p50 {ms(percentile(latencies, 50)):.0f} ms,"
            f" p99 {p99s[-1]:.0f} ms (raw p99 {raw_p99s[-1]:.1f} ms); load average {loadavg()}",
            flush=True,
        )
    if left:
        ctx.failures.append(f"B5: run processes alive after their runs were stopped: {left}")
    detail = f"{n} runs stopped at once; raw: SIGTERM to {n} bash processes"
    return [
        Figure("B5 stop → stopped p99", "ms", median(p99s), median(raw_p99s), len(p99s), detail),
        Figure("B5 survivors", "", len(left), None, len(p99s), "checked in /proc"),
    ]
