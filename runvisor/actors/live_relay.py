"""Live output: the spool bytes of runs that someone follows, published to Redis as soon as they
are written, before PostgreSQL has them.

One thread. Every FOLLOWED_EVERY_S it asks Redis which of this node's runs have a subscriber
on their events channel (a live stream on any node: `PUBSUB NUMSUB`, one round trip); every
LOOK_EVERY_S it reads what those runs' spool files gained (up to 64 KiB each) and publishes
it, all of them in one round trip. Only followed runs cost anything: with a thousand runs and
a few viewers, a look is a few stat() and pread() calls, not a thousand, so it keeps its pace
while the node is busy (each call that releases the GIL may wait for it).

PostgreSQL stays the record: the bytes published are in the spool, and the pump stores them
at the same offsets (LiveState's tail script publishes each byte once, whoever comes first).
A run followed from the middle of its output starts with at most its last 64 KiB written; a
stream gets what lies before from PostgreSQL.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from runvisor.logs import get_logger
from runvisor.models import output_head_tail
from runvisor.store.live import LiveState

log = get_logger(__name__)

LOOK_EVERY_S = 0.05
FOLLOWED_EVERY_S = 0.5
PIECE_BYTES = 64 * 1024  # published per run per look, at most; the rest at the next


@dataclass(slots=True)
class _Spool:
    ref: pykka.ActorRef[Any]  # the RunActor of the attempt; a dead one's entry is dropped
    run_id: int
    path: Path
    base_offset: int  # where the spool's first byte is in the run's output
    max_output_bytes: int  # past it, the head and the tail only (output_head_tail)
    published: int  # spool bytes published (or skipped)
    followed: bool = False


class LiveRelay:
    def __init__(self, live: LiveState) -> None:
        self._live = live.with_own_connection()
        self._lock = threading.Lock()
        self._spools: dict[int, _Spool] = {}  # keyed by id(ref): one entry per RunActor
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-live", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._live.close()

    def watch(
        self,
        ref: pykka.ActorRef[Any],
        *,
        run_id: int,
        spool_path: Path,
        base_offset: int,
        stored: int,
        max_output_bytes: int,
    ) -> None:
        spool = _Spool(ref, run_id, spool_path, base_offset, max_output_bytes, stored)
        with self._lock:
            self._spools[id(ref)] = spool

    def unwatch(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._spools.pop(id(ref), None)

    def _loop(self) -> None:
        asked_at = 0.0
        while not self._stopping.wait(LOOK_EVERY_S):
            try:
                if time.monotonic() - asked_at >= FOLLOWED_EVERY_S:
                    asked_at = time.monotonic()
                    self._ask_followed()
                self._look()
            except Exception:  # a dead relay would leave live streams at the flush's pace
                log.exception("live relay: a look failed; trying again")
                self._stopping.wait(1.0)

    def _look(self) -> None:
        """Publish what the followed runs' spools gained since the last look."""
        with self._lock:
            followed = [s for s in self._spools.values() if s.followed]
        fresh: list[tuple[int, int, bytes]] = []
        for spool in followed:
            piece = _new(spool)
            if piece:  # (run, the offset it ends at, the bytes)
                fresh.append((spool.run_id, spool.base_offset + spool.published, piece))
        if fresh:
            self._live.publish_outputs(fresh, stored=False)

    def _ask_followed(self) -> None:
        with self._lock:
            for key in [k for k, s in self._spools.items() if not s.ref.is_alive()]:
                del self._spools[key]
            spools = list(self._spools.values())
        followed = self._live.followed_runs([s.run_id for s in spools])
        if followed is None:
            return  # Redis cannot say: go on as before
        for spool in spools:
            now = spool.run_id in followed
            if now and not spool.followed:  # from the last PIECE_BYTES written on
                try:
                    size = os.stat(spool.path).st_size
                except OSError:
                    continue
                spool.published = max(spool.published, size - PIECE_BYTES)
            spool.followed = now


def _new(spool: _Spool) -> bytes:
    """The spool's bytes written since the last look (at most PIECE_BYTES); `published` moves
    past them. Past the run's max_output_bytes only what the run keeps: the head, then (as the
    pump does) the last tail's worth, skipping what can only fall in the gap (the offsets of
    the next piece say so)."""
    head, tail = output_head_tail(spool.max_output_bytes)
    try:
        fd = os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if spool.base_offset + spool.published >= head:
            spool.published = max(spool.published, os.fstat(fd).st_size - tail)
        want = PIECE_BYTES
        at = spool.base_offset + spool.published
        if at < head:
            want = min(want, head - at)  # no piece spans the head's end
        data = os.pread(fd, want, spool.published)
    except OSError:
        return b""
    finally:
        os.close(fd)
    spool.published += len(data)
    return data
