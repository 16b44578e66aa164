"""One Redis subscription per node for all of its live output streams.

Each stream (`GET …/events`, `GET …/output?follow=1`) registers for its run; the hub subscribes
the node's one pub/sub connection to that run's events channel while at least one stream of
the node follows the run, and hands each message to every such stream's inbox. Redis carries
the output as soon as the live relay reads it from the spool, whichever node runs the run.

Redis is a fast path only: a stream also reads PostgreSQL every RECHECK_S (the streams in
output_follow.py), so a lost message, a full inbox or Redis down delays output and never
loses it. When the node stops, every stream is told to end (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from runvisor.logs import get_logger
from runvisor.store.live_events import LiveEvent, OutputEvent, parse_event
from runvisor.store.redis_keys import RedisKeys

RESUBSCRIBE_S = 1.0  # after Redis failed, the listener tries again this soon
# Output a stream may have waiting (in its inbox, and again past a hole); more is dropped and
# read from PostgreSQL instead: what a slow or stalled stream costs the node is bounded.
INBOX_BYTES = 256 * 1024

log = get_logger(__name__)


class NodeStopping(Exception):
    """The node is shutting down: live streams end (their clients reconnect elsewhere)."""


class Inbox:
    """What the hub received for one stream, until the stream takes it."""

    def __init__(self) -> None:
        self._events: deque[LiveEvent] = deque()
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._closed = False

    def put(self, event: LiveEvent) -> None:
        if isinstance(event, OutputEvent):
            if self._bytes + len(event.data) > INBOX_BYTES:
                return  # the stream sees a hole and reads it from PostgreSQL
            self._bytes += len(event.data)
        self._events.append(event)
        self._arrived.set()

    def close(self) -> None:
        self._closed = True
        self._arrived.set()

    async def take(self, timeout_s: float) -> list[LiveEvent]:
        """What has arrived, waiting up to `timeout_s` for something; [] after the wait.
        Raises NodeStopping once the hub is closed."""
        if not self._events and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
        if self._closed:
            raise NodeStopping()
        self._arrived.clear()
        events = list(self._events)
        self._events.clear()
        self._bytes = 0
        return events


class LiveHub:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self.keys = keys
        self._inboxes: dict[int, set[Inbox]] = {}
        self._by_channel: dict[bytes, int] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._lock = asyncio.Lock()  # one (un)subscribe at a time on the connection
        self._closed = False

    @property
    def streams(self) -> int:
        return sum(len(inboxes) for inboxes in self._inboxes.values())

    @contextlib.asynccontextmanager
    async def follow(self, run_id: int) -> AsyncIterator[Inbox]:
        """An inbox of the run's events for as long as the block runs."""
        inbox = Inbox()
        if self._closed:
            inbox.close()
        inboxes = self._inboxes.setdefault(run_id, set())
        inboxes.add(inbox)
        if len(inboxes) == 1:
            self._by_channel[self.keys.run_events(run_id).encode()] = run_id
            await self._send("SUBSCRIBE", run_id)
        try:
            yield inbox
        finally:
            inboxes.discard(inbox)
            if not inboxes:
                del self._inboxes[run_id]
                self._by_channel.pop(self.keys.run_events(run_id).encode(), None)
                await self._send("UNSUBSCRIBE", run_id)

    def close(self) -> None:
        """The node stops: every stream ends."""
        self._closed = True
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.close()

    async def _send(self, command: str, run_id: int) -> None:
        """Best effort: without Redis a stream reads PostgreSQL, and the listener subscribes
        again to every channel of the streams there are when it reconnects."""
        channel = self.keys.run_events(run_id)
        try:
            async with self._lock:
                pubsub = self._pubsub
                if pubsub is None:
                    return
                if command == "SUBSCRIBE":
                    await pubsub.subscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            log.info("live output subscription failed", run_id=run_id, error=str(exc))

    def _deliver(self, channel: bytes, raw: bytes) -> None:
        run_id = self._by_channel.get(channel)
        if run_id is None:
            return
        event = parse_event(raw)
        if event is None:
            return
        for inbox in self._inboxes.get(run_id, ()):
            inbox.put(event)

    async def listen(self) -> None:
        """Deliver the events of the runs followed here; runs until cancelled."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    # Under the lock: a stream that registers meanwhile is in the list, or
                    # subscribes itself once the connection is there.
                    async with self._lock:
                        # Always subscribed to something, so that listen() waits for messages.
                        channels = [self.keys.runs_ended()]
                        channels += [self.keys.run_events(run_id) for run_id in self._inboxes]
                        await pubsub.subscribe(*channels)
                        self._pubsub = pubsub
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._deliver(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                log.info("live output listener waits for Redis", error=str(exc))
            finally:
                self._pubsub = None
            await asyncio.sleep(RESUBSCRIBE_S)


@contextlib.asynccontextmanager
async def listening(hub: LiveHub) -> AsyncIterator[LiveHub]:
    """Run the hub's listener for as long as the app runs."""
    task = asyncio.create_task(hub.listen(), name="live output listener")
    try:
        yield hub
    finally:
        hub.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
