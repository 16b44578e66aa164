"""Flush sooner when output piles up: one thread looks at the size of every active spool file
a few times a second and tells a RunActor to flush at once when 256 KiB or more are waiting,
instead of waiting for its next flush tick. One stat() per run per look, no reads. It also
tells the live relay (live_relay.py) which spools there are, for the runs someone follows."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from runvisor import protocol as m
from runvisor.actors.live_relay import LiveRelay
from runvisor.store.live import LiveState

PENDING_BYTES = 256 * 1024
LOOK_EVERY_S = 0.05


@dataclass(slots=True)
class _Watched:
    ref: pykka.ActorRef[Any]
    spool_path: Path
    stored: int  # spool bytes the actor has stored; updated by the actor after each flush
    nudged: bool = False


class FlushNudger:
    def __init__(self, live: LiveState | None = None) -> None:
        self._relay = LiveRelay(live) if live is not None else None  # None: no live output
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # keyed by id(ref): one entry per RunActor
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if self._relay is not None:
            self._relay.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._relay is not None:
            self._relay.stop(timeout_s)

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
        """Watch the spool of `ref`'s attempt, `stored` bytes of it stored; for live output,
        the spool holds run `run_id`'s output from `base_offset`, up to `max_output_bytes`."""
        with self._lock:
            self._watched[id(ref)] = _Watched(ref, spool_path, stored)
        if self._relay is not None:
            self._relay.watch(
                ref,
                run_id=run_id,
                spool_path=spool_path,
                base_offset=base_offset,
                stored=stored,
                max_output_bytes=max_output_bytes,
            )

    def stored(self, ref: pykka.ActorRef[Any], stored: int) -> None:
        """The actor flushed: `stored` bytes of its spool are stored; it may be nudged again."""
        with self._lock:
            entry = self._watched.get(id(ref))
            if entry is not None:
                entry.stored, entry.nudged = stored, False

    def unwatch(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._watched.pop(id(ref), None)
        # The relay keeps its entry while the actor lives (a run past its cap publishes
        # nothing more); it drops those of dead actors itself.

    def _loop(self) -> None:
        while not self._stopping.wait(LOOK_EVERY_S):
            with self._lock:
                entries = [e for e in self._watched.values() if not e.nudged]
            for entry in entries:
                try:
                    pending = os.stat(entry.spool_path).st_size - entry.stored
                except OSError:
                    continue
                if pending >= PENDING_BYTES:
                    entry.nudged = True
                    try:
                        entry.ref.tell(m.FlushSoon())
                    except pykka.ActorDeadError:
                        self.unwatch(entry.ref)
