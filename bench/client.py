"""An asyncio HTTP client of the v1 API for the load (aiohttp, kept-alive connections).

The tests' Api (requests, one call at a time) sets things up; this one sends the load, where
the client's own CPU time counts: it shares the machine's two cores with the node.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.errors import Misbehaved

TERMINAL = frozenset({"succeeded", "failed", "stopped", "timed_out", "lost"})
WAIT_S = 30  # ?wait_s= of a GET that waits for the end (the node answers at the end)


@dataclass
class Finished:
    """A run seen terminal: the run, the 202's latency and the time from start to seeing it."""

    run: dict[str, Any]
    accept_s: float
    round_trip_s: float
    polls: int


class AsyncApi:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, expect: int = 200, json: Any = None
    ) -> dict[str, Any]:
        async with self.session.request(
            method, self.base + path, headers=self.headers, json=json
        ) as response:
            body = await response.read()
            if response.status != expect:
                raise Misbehaved(f"{method} {path}: HTTP {response.status} {body[:300]!r}")
        return _json(body)

    async def timed_get(self, path: str, open_route: bool = False) -> float:
        """Seconds from sending GET `path` to its whole answer (200 expected)."""
        t0 = time.perf_counter()
        async with self.session.get(
            self.base + path, headers=None if open_route else self.headers
        ) as response:
            await response.read()
            if response.status != 200:
                raise Misbehaved(f"GET {path}: HTTP {response.status}")
        return time.perf_counter() - t0

    async def start_run(self, command_id: int) -> dict[str, Any]:
        return await self.call("POST", f"/api/v1/commands/{command_id}/runs", 202, json={})

    async def run(self, run_id: int) -> dict[str, Any]:
        return await self.call("GET", f"/api/v1/runs/{run_id}")

    async def stop(self, run_id: int) -> dict[str, Any]:
        return await self.call("POST", f"/api/v1/runs/{run_id}/stop", 202, json={})

    async def count_runs(self, command_id: int, status: str) -> int:
        page = await self.call(
            "GET", f"/api/v1/runs?command_id={command_id}&status={status}&limit=1"
        )
        return int(page["total"])

    async def runs_of(self, command_id: int, status: str = "") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        filters = f"command_id={command_id}" + (f"&status={status}" if status else "")
        while True:
            page = await self.call("GET", f"/api/v1/runs?{filters}&limit=1000&offset={len(items)}")
            items.extend(page["items"])
            if len(items) >= page["total"] or not page["items"]:
                return items

    async def start_and_wait(
        self,
        command_id: int,
        poll_s: float,
        max_poll_s: float,
        timeout_s: float = 60.0,
        *,
        wait: bool = False,
    ) -> Finished:
        """Start a run and poll it until it is terminal. Any other status means "poll on": the
        202 may say `running` or `queued`. The wait between polls starts at `poll_s` and grows
        by half each time up to `max_poll_s`: a short run is seen ending within about a poll,
        a longer one is not slowed down by a flood of GETs. With `wait`, each GET asks the node
        to answer once the run has ended (`?wait_s=`), with no sleep between."""
        t0 = time.perf_counter()
        run = await self.start_run(command_id)
        accept_s = time.perf_counter() - t0
        polls = 0
        while run["status"] not in TERMINAL:
            if time.perf_counter() - t0 > timeout_s:
                raise Misbehaved(f"run {run['id']} still {run['status']} after {timeout_s} s")
            if wait:
                run = await self.call("GET", f"/api/v1/runs/{run['id']}?wait_s={WAIT_S}")
            else:
                await asyncio.sleep(poll_s)
                poll_s = min(poll_s * 1.5, max_poll_s)
                run = await self.run(run["id"])
            polls += 1
        return Finished(run, accept_s, time.perf_counter() - t0, polls)

    async def output_digest(self, run_id: int) -> tuple[str, int]:
        """SHA-256 and length of the run's stored output, read as one streamed answer."""
        digest, size = hashlib.sha256(), 0
        async with self.session.get(
            f"{self.base}/api/v1/runs/{run_id}/output", headers=self.headers
        ) as response:
            if response.status != 200:
                raise Misbehaved(f"GET output of run {run_id}: HTTP {response.status}")
            async for chunk in response.content.iter_chunked(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    async def output(self, run_id: int) -> bytes:
        async with self.session.get(
            f"{self.base}/api/v1/runs/{run_id}/output", headers=self.headers
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise Misbehaved(f"GET output of run {run_id}: HTTP {response.status}")
            return body


def _json(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise Misbehaved(f"expected a JSON object, got {body[:100]!r}")
    return value


@asynccontextmanager
async def connect(base: str, token: str, connections: int) -> AsyncIterator[AsyncApi]:
    """An AsyncApi over at most `connections` kept-alive connections."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield AsyncApi(session, base, token)


def expect_succeeded(run: dict[str, Any], what: str) -> None:
    if run["status"] != "succeeded":
        raise Misbehaved(
            f"{what}: run {run['id']} ended {run['status']} (exit_code={run['exit_code']},"
            f" signal={run['signal']}, reason={run['reason']!r})"
        )
