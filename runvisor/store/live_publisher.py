"""One thread sends the live writes of a node's RunActors to Redis: the output each stored and
each state change, queued without waiting, sent in the order queued, everything that queued
meanwhile in one pipelined round trip.

A RunActor then never waits on Redis for its live view (a round trip on every flush of every
run was a quarter of a busy node's time), and a thousand runs printing cost tens of round trips
a second, not thousands. One queue keeps each run's writes in order: its last output is
published before the state that says it ended. Redis is a view (PostgreSQL has the truth): a
batch that fails is logged by LiveState; its output is dropped, its state changes are sent again
with the next batch; while Redis is slow, output beyond MAX_QUEUED writes waiting is dropped too
(a follower sees a gap, as after an outage), never memory without bound.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from runvisor.logs import get_logger

MAX_QUEUED = 20_000
MAX_BATCH = 1_000  # writes in one pipeline, at most

log = get_logger(__name__)

Item = TypeVar("Item")


class LivePublisher(Generic[Item]):
    def __init__(
        self,
        send: Callable[[list[Item]], bool],
        *,
        name: str = "runvisor-live-publisher",
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._send = send  # False: Redis did not take the batch
        self._max_queued = max_queued
        self._queue: queue.SimpleQueue[tuple[Item, bool] | None] = queue.SimpleQueue()
        self._kept: list[tuple[Item, bool]] = []  # states of a failed batch, sent first next
        self._dropping = False
        self.dropped = 0  # output writes dropped while the queue was full
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Item, *, droppable: bool) -> None:
        """Queue `item`; never waits. A `droppable` one is dropped while MAX_QUEUED wait, and
        when the batch it goes in fails; one that is not is sent again with the next."""
        if droppable and self._queue.qsize() >= self._max_queued:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("live output dropped: Redis is not keeping up", queued=self._max_queued)
            return
        self._dropping = False
        self._queue.put((item, droppable))

    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to `timeout_s`), then stop."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [*self._kept, first], False
            while len(batch) < MAX_BATCH:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            try:
                sent = self._send([item for item, _ in batch])
            except Exception:  # a bug must not end the thread: the next batch is sent
                log.exception("live writes not sent")
                sent = True  # not kept: a write that raises would raise again
            # Redis is a view, but a state it missed (an end, its keys' expiry) would stay
            # missed: kept for the next batch, in order; the output in it is dropped.
            self._kept = [] if sent else [entry for entry in batch if not entry[1]]
            if stop:
                return
