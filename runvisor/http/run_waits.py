"""Waiting for a run to end without polling: `GET /api/v1/runs/{id}?wait_s=N` answers as soon
as the run is terminal, or after N seconds with the run as it is then.

Whichever node ends a run announces it on one Redis channel (`RedisKeys.runs_ended`); every
node listens there and wakes the requests waiting for that run. PostgreSQL stays the source of
the answer: a woken request reads the run again, and a waiting request also reads it every
RECHECK_S, so that a lost message (or Redis down) delays the answer at most that much and never
makes it wrong. A waiting request holds no database connection, and one of the node's
MAX_RUN_WAITS places (429 past them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from runvisor.errors import TooManyRequests
from runvisor.logs import get_logger
from runvisor.models import Run

MAX_WAIT_S = 60
MAX_RUN_WAITS = 1024  # requests waiting at once on one node
RECHECK_S = 1.0  # a waiting request reads the run again this often, whatever Redis says
RESUBSCRIBE_S = 1.0  # after Redis failed, the listener tries again this soon

log = get_logger(__name__)


class RunWaits:
    def __init__(self, redis: aioredis.Redis, channel: str, *, max_waits: int = MAX_RUN_WAITS):
        self._redis = redis
        self._channel = channel
        self._max_waits = max_waits
        self._waiting: dict[int, set[asyncio.Event]] = {}
        self._count = 0

    async def wait_until_terminal(
        self, run_id: int, wait_s: float, read: Callable[[], Awaitable[Run]]
    ) -> Run:
        """The run once it is terminal, or as it is after `wait_s` seconds."""
        run = await read()
        if run.status.is_terminal or wait_s <= 0:
            return run
        if self._count >= self._max_waits:
            raise TooManyRequests(
                f"{self._max_waits} requests already wait for runs on this node; read the run"
                " without wait_s, or try again later",
                code="too_many_waits",
            )
        deadline = time.monotonic() + wait_s
        woken = asyncio.Event()
        self._waiting.setdefault(run_id, set()).add(woken)
        self._count += 1
        try:
            run = await read()  # it may have ended before we listened
            while not run.status.is_terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(left, RECHECK_S))
                woken.clear()
                run = await read()
            return run
        finally:
            self._count -= 1
            events = self._waiting.get(run_id)
            if events is not None:
                events.discard(woken)
                if not events:
                    del self._waiting[run_id]

    def _wake(self, run_id: int) -> None:
        for event in self._waiting.get(run_id, ()):
            event.set()

    async def listen(self) -> None:
        """Wake the waiters of each run announced as ended; runs until cancelled."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            with contextlib.suppress(ValueError, TypeError):
                                self._wake(int(message["data"]))
            except (RedisError, OSError) as exc:
                log.info("run-end listener waits for Redis", error=str(exc))
            await asyncio.sleep(RESUBSCRIBE_S)


@contextlib.asynccontextmanager
async def listening(waits: RunWaits) -> AsyncIterator[RunWaits]:
    """Run the listener for as long as the app runs."""
    task = asyncio.create_task(waits.listen(), name="run-end listener")
    try:
        yield waits
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
