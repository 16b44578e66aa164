"""Flush sooner when output piles up, and publish new output at once: one thread looks at the
size of every active spool file 20 times a second. It tells a RunActor to flush at once when
256 KiB or more are waiting, instead of waiting for its next flush tick; and it reads what was
written since its last look (up to 64 KiB per run) and publishes it to Redis, all runs in one
round trip, so that live readers (`GET …/events`, `…/output?follow=1`) get output within about
one look, not one flush. PostgreSQL stays the record: those bytes are in the spool, and the
pump stores them at the same offsets. One stat() per run per look; a read only of new bytes."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from runvisor import protocol as m
from runvisor.store.live import LiveState

PENDING_BYTES = 256 * 1024
LOOK_EVERY_S = 0.05
LIVE_PIECE_BYTES = 64 * 1024  # published per run per look, at most; the rest at the next


@dataclass(slots=True)
class _Watched:
    ref: pykka.ActorRef[Any]
    spool_path: Path
    stored: int  # spool bytes the actor has stored; updated by the actor after each flush
    run_id: int = 0
    base_offset: int = 0  # where the spool's first byte is in the run's output
    max_output_bytes: int = 0  # nothing at or past this offset is published (0: nothing)
    published: int = 0  # spool bytes published to Redis
    nudged: bool = False


class FlushNudger:
    def __init__(self, live: LiveState | None = None) -> None:
        self._live = live  # None: no live publishing (only the nudges)
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # keyed by id(ref): one entry per RunActor
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def watch(
        self,
        ref: pykka.ActorRef[Any],
        spool_path: Path,
        stored: int,
        *,
        run_id: int = 0,
        base_offset: int = 0,
        max_output_bytes: int = 0,
    ) -> None:
        """Watch the spool of `ref`'s attempt; its output from `stored` on is published live
        (run `run_id`, the spool beginning at `base_offset`) below `max_output_bytes`."""
        entry = _Watched(ref, spool_path, stored, run_id, base_offset, max_output_bytes, stored)
        with self._lock:
            self._watched[id(ref)] = entry

    def stored(self, ref: pykka.ActorRef[Any], stored: int) -> None:
        """The actor flushed: `stored` bytes of its spool are stored; it may be nudged again."""
        with self._lock:
            entry = self._watched.get(id(ref))
            if entry is not None:
                entry.stored, entry.nudged = stored, False
                entry.published = max(entry.published, stored)  # the pump published those

    def unwatch(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._watched.pop(id(ref), None)

    def _loop(self) -> None:
        while not self._stopping.wait(LOOK_EVERY_S):
            with self._lock:
                entries = list(self._watched.values())
            fresh: list[tuple[int, int, bytes]] = []
            for entry in entries:
                try:
                    size = os.stat(entry.spool_path).st_size
                except OSError:
                    continue
                if not entry.nudged and size - entry.stored >= PENDING_BYTES:
                    entry.nudged = True
                    try:
                        entry.ref.tell(m.FlushSoon())
                    except pykka.ActorDeadError:
                        self.unwatch(entry.ref)
                        continue
                if self._live is not None and size > entry.published:
                    piece = _new_output(entry, size)
                    if piece:
                        entry.published += len(piece)
                        fresh.append((entry.run_id, entry.base_offset + entry.published, piece))
            if fresh and self._live is not None:
                self._live.publish_outputs(fresh, stored=False)


def _new_output(entry: _Watched, size: int) -> bytes:
    """The spool's bytes from what was published up to `size` (at most LIVE_PIECE_BYTES),
    none at or past the run's output cap."""
    room = entry.max_output_bytes - (entry.base_offset + entry.published)
    want = min(size - entry.published, LIVE_PIECE_BYTES, room)
    if want <= 0:
        return b""
    try:
        fd = os.open(entry.spool_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, want, entry.published)
    except OSError:
        return b""
    finally:
        os.close(fd)
