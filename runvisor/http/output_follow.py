"""Following a run's output: what it has stored, then its new output as it comes, until the run
has ended and every byte of it was given. Both live streams use it (`GET …/events` and
`GET …/output?follow=1`).

Three sources, one sequence of bytes by offset:
- PostgreSQL, the record: everything below the run's `output_bytes`;
- Redis messages (live_hub.py), each with its offsets: the live relay publishes output as soon as it
  is in the spool, before PostgreSQL has it, at the offsets it will be stored at;
- the tail in Redis (the last 64 KiB published), for a hole between the two: bytes published
  before the stream subscribed, or dropped on the way, and not stored yet.
A message beyond the next byte wanted waits (a hole) until PostgreSQL or the tail fills the
hole; one below it is skipped, so nothing is given twice and nothing is left out. PostgreSQL is
read again every RECHECK_S, and at once on a status message; a run read as ended has stored
everything, so the stream ends once that is given.

Past its max_output_bytes a run keeps the head and the tail of its output: when the next byte
wanted lies in the gap PostgreSQL records, a Dropped item (the marker line) takes the gap's
place and the stream goes on at its end. While the run goes on the gap grows, so a follower may
meet it more than once: each time, the marker says how many bytes the gap holds then.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from runvisor.http.live_hub import INBOX_BYTES, Inbox, LiveHub
from runvisor.logs import get_logger
from runvisor.models import Run
from runvisor.store.history import History
from runvisor.store.live_events import OutputEvent, StatusEvent, read_tail
from runvisor.store.output_reads import gap_marker

RECHECK_S = 1.0  # PostgreSQL is read at least this often while a run goes on
HOLE_RECHECK_S = 0.2  # and this often while output waits for a hole to be filled

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Piece:
    """Output bytes at `start` in the run's output."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bytes [start, end) of the output were dropped (the run's gap holds `gap_bytes`): the
    stream gives `marker` in their place and goes on at `end`."""

    start: int
    end: int
    gap_bytes: int

    @property
    def marker(self) -> bytes:
        return gap_marker(self.gap_bytes)


@dataclass(frozen=True, slots=True)
class RunSeen:
    """The run as PostgreSQL has it: at the start, at each status change, and at the end
    (`last`: it has ended and all its output was given)."""

    run: Run
    last: bool = False


class OutputFollower:
    def __init__(
        self,
        *,
        history: History,
        hub: LiveHub,
        redis: aioredis.Redis,
        run_id: int,
        offset: int,
        client_gone: Callable[[], bool],
    ) -> None:
        self._history = history
        self._hub = hub
        self._redis = redis
        self._run_id = run_id
        self.position = offset  # the next byte to give
        self._client_gone = client_gone
        self._waiting: list[OutputEvent] = []  # live output beyond a hole

    async def items(self) -> AsyncGenerator[Piece | Dropped | RunSeen, None]:
        """The run, then its output from `offset` and its changes, until the run has ended
        (the last item is the ended run) or the client is gone. Raises NodeStopping."""
        async with self._hub.follow(self._run_id) as inbox:
            run = await self._history.get_run(self._run_id)  # after subscribing: no gap
            yield RunSeen(run)
            read_at = time.monotonic()
            tail_tried, first = False, True
            while not self._client_gone():
                async for piece in self._stored(run):
                    yield piece
                if run.status.is_terminal:  # an ended run's output is all stored
                    yield RunSeen(run, last=True)
                    return
                if first:  # what was published and is not stored yet
                    first = False
                    async for piece in self._from_tail():
                        yield piece
                for piece in self._take_waiting():
                    yield piece
                if self._waiting and not tail_tried:
                    tail_tried = True
                    async for piece in self._from_tail():
                        yield piece
                    continue
                reread = await self._wait(inbox, read_at)
                if reread:
                    tail_tried = False
                    previous, run = run, await self._history.get_run(self._run_id)
                    read_at = time.monotonic()
                    if run.status != previous.status and not run.status.is_terminal:
                        yield RunSeen(run)

    async def _wait(self, inbox: Inbox, read_at: float) -> bool:
        """Take what the hub received; True when PostgreSQL should be read again."""
        timeout = HOLE_RECHECK_S if self._waiting else RECHECK_S
        events = await inbox.take(max(0.0, read_at + timeout - time.monotonic()))
        status_changed = False
        for event in events:
            if isinstance(event, OutputEvent):
                if event.end > self.position:
                    self._waiting.append(event)
            elif isinstance(event, StatusEvent):
                status_changed = True
        self._waiting.sort(key=lambda e: e.start)
        while sum(len(e.data) for e in self._waiting) > INBOX_BYTES:
            self._waiting.pop()  # the newest: read from PostgreSQL later
        due = time.monotonic() - read_at >= timeout
        return status_changed or due or not events

    async def _stored(self, run: Run) -> AsyncIterator[Piece | Dropped]:
        """What PostgreSQL has from the position: the head's bytes, the gap's marker, the
        tail's bytes."""
        gap, reads = run.output_gap, self._history.output_reads
        while self.position < run.output_bytes:
            if gap is not None and gap[0] <= self.position < gap[1]:
                dropped = Dropped(self.position, gap[1], gap[1] - gap[0])
                self.position = gap[1]
                yield dropped
                continue
            end = gap[0] if gap is not None and self.position < gap[0] else run.output_bytes
            async for start, data in reads.iter_at(self._run_id, offset=self.position, end=end):
                self.position = start + len(data)
                yield Piece(start, data)
                del data
            if self.position < end and not run.status.is_terminal:
                return  # the tail moved on meanwhile: the run read next has the larger gap
            # An ended run's output no longer changes: a range without chunks stays so.
            self.position = max(self.position, end)

    def _take_waiting(self) -> list[Piece]:
        """The waiting live output that follows on from what was given."""
        pieces: list[Piece] = []
        while self._waiting and self._waiting[0].start <= self.position:
            event = self._waiting.pop(0)
            if event.end > self.position:
                pieces.append(Piece(self.position, event.data[self.position - event.start :]))
                self.position = event.end
        return pieces

    async def _from_tail(self) -> AsyncIterator[Piece]:
        """Fill a hole from the tail kept in Redis, if it holds the next byte wanted."""
        try:
            tail = await read_tail(self._redis, self._hub.keys, self._run_id)
        except (RedisError, OSError) as exc:
            log.info("output tail unreadable", run_id=self._run_id, error=str(exc))
            return
        if tail is not None and tail.start <= self.position < tail.end:
            piece = Piece(self.position, tail.data[self.position - tail.start :])
            self.position = piece.end
            yield piece
