"""B1: short runs per second through the v1 API. 16 clients on kept-alive connections, each
starting a run of `echo hi` and polling it until it has ended, again and again. Raw limit: 8
threads running `subprocess.run(["bash", "-c", "echo hi"])`. With a peer, the same 16 clients'
workload through it. Raw, runvisor and peer take turns in each repeat, so that a change in the
machine's load falls on all three."""

from __future__ import annotations

import asyncio
from typing import Protocol

from bench.client import connect, expect_succeeded
from bench.context import Context
from bench.load import async_rate, raw_echo, threaded_rate
from bench.machine import loadavg
from bench.report import B1_WAITING, PEER_B1, Figure
from bench.stats import median


class Peer(Protocol):
    name: str

    def rate(self, clients: int, seconds: float) -> float: ...


async def runvisor_rate(
    ctx: Context, command_id: int, seconds: float, *, wait: bool = False
) -> tuple[float, float]:
    """Runs/s, and the GETs a run took on average until it was seen ending (`wait`: each GET
    waits for the end, ?wait_s=, instead of polling)."""
    sizes = ctx.sizes
    runs = polls = 0
    async with connect(ctx.node.base_url, ctx.node.token, sizes.b1_clients) as api:

        async def one_run() -> None:
            nonlocal runs, polls
            finished = await api.start_and_wait(
                command_id, sizes.b1_poll_s, sizes.b1_max_poll_s, wait=wait
            )
            expect_succeeded(finished.run, "B1")
            runs, polls = runs + 1, polls + finished.polls

        rate = await async_rate(sizes.b1_clients, seconds, one_run)
    return rate, polls / max(1, runs)


async def measure(ctx: Context, peer: Peer | None = None) -> list[Figure]:
    sizes = ctx.sizes
    command_id = int(ctx.node.api.create_command("echo hi", name="bench-b1")["id"])
    await runvisor_rate(ctx, command_id, 0.5)  # warm-up: connections, pools, code paths
    raw: list[float] = []
    service: list[float] = []
    waiting: list[float] = []
    peer_rates: list[float] = []
    for repeat in range(sizes.b1_repeats):
        raw.append(
            await asyncio.to_thread(threaded_rate, sizes.b1_raw_threads, sizes.b1_seconds, raw_echo)
        )
        rate, polls = await runvisor_rate(ctx, command_id, sizes.b1_seconds)
        service.append(rate)
        waited, waits = await runvisor_rate(ctx, command_id, sizes.b1_seconds, wait=True)
        waiting.append(waited)
        line = (
            f"   repeat {repeat + 1}: raw {raw[-1]:.0f}/s, runvisor {rate:.1f} runs/s"
            f" ({polls:.1f} polls per run), with ?wait_s {waited:.1f} runs/s"
            f" ({waits:.1f} GETs per run)"
        )
        if peer is not None:
            peer_rates.append(
                await asyncio.to_thread(peer.rate, sizes.b1_clients, sizes.b1_seconds)
            )
            line += f", {peer.name} {peer_rates[-1]:.1f}/s"
        print(f"{line}; load average {loadavg()}", flush=True)
    detail = (
        f"{sizes.b1_clients} clients, {sizes.b1_seconds:g} s per repeat;"
        f" raw: subprocess.run from {sizes.b1_raw_threads} threads"
    )
    figures = [
        Figure("B1 short runs/s", "runs/s", median(service), median(raw), len(service), detail),
        Figure(
            B1_WAITING,
            "runs/s",
            median(waiting),
            median(raw),
            len(waiting),
            detail + "; each GET waits for the end (?wait_s) instead of polling",
        ),
    ]
    if peer is not None:
        figures.append(
            Figure(PEER_B1, "runs/s", median(peer_rates), median(raw), len(peer_rates), detail)
        )
    return figures
