"""Stores the output of every running attempt from one thread: it looks at the size of each
spool file every LOOK_EVERY_S (less often with many: LOOK_SHARE) and flushes the spools that
are due (RUNVISOR_FLUSH_INTERVAL_S since their last flush, or PENDING_BYTES waiting), a batch
of each, all in the journal's next group-commit batch: one wait for all of them, then each
pump moves on and publishes.

A RunActor is not woken for its output. (Each used to flush its own on a timer: a thread
woken, a journal round trip and a timer per run per interval, most of a node's time with a
thousand runs printing.) It stores what is left itself at its attempt's end, after retiring its
pump from here; a pump's lock keeps the two apart. The RunActor is told when its attempt was
superseded (a write fenced off) or passed an output limit that stops it. The flusher also tells
the live relay (live_relay.py) which spools there are, for the runs someone follows."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import pykka

from runvisor import protocol as m
from runvisor.actors.live_relay import LiveRelay
from runvisor.actors.output_pump import OutputPump
from runvisor.actors.tell import tell_quietly
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.output_writes import OutputBatch

PENDING_BYTES = 256 * 1024  # waiting in a spool: flushed at the next look, not its interval
LOOK_EVERY_S = 0.05  # between looks at the spools' sizes; longer with many (LOOK_SHARE)
LOOK_SHARE = 0.05
RETRY_S = 1.0  # after PostgreSQL failed a flush; doubled for each failure in a row
MAX_RETRY_S = 16.0  # a run whose row another transaction holds waits up to this long

log = get_logger(__name__)


@dataclass(slots=True)
class _Watched:
    ref: pykka.ActorRef[Any]  # the attempt's RunActor
    pump: OutputPump
    stops_at_limit: bool  # on_output_limit "stop": the RunActor is told once it is passed
    due_at: float = 0.0  # time.monotonic() of its next flush, output or not
    failures: int = 0  # flushes PostgreSQL refused in a row
    told_limit: bool = False


class OutputFlusher:
    def __init__(
        self,
        journal: RunJournal | None,
        live: LiveState | None = None,
        *,
        flush_interval_s: float = 0.5,
    ) -> None:
        self._journal = journal  # None: nothing is flushed here (tests of the relay alone)
        self._relay = LiveRelay(live) if live is not None else None  # None: no live output
        self._interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}  # keyed by id(ref): one entry per RunActor
        self._store_down = False  # the last flush met StoreUnavailable (logged once)
        self._look_every_s = LOOK_EVERY_S
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
        self, ref: pykka.ActorRef[Any], pump: OutputPump, *, stops_at_limit: bool = False
    ) -> None:
        """Store the output of `ref`'s attempt through `pump` from now on (until unwatch, or
        pump.retire); for live output, hand its spool to the relay."""
        due_at = time.monotonic() + self._interval_s
        with self._lock:
            self._watched[id(ref)] = _Watched(ref, pump, stops_at_limit, due_at)
        if self._relay is not None:
            self._relay.watch(
                ref,
                run_id=pump.run_id,
                spool_path=pump.spool_path,
                base_offset=pump.base_offset,
                stored=pump.position,
                max_output_bytes=pump.max_output_bytes,
            )

    def unwatch(self, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._watched.pop(id(ref), None)
        # The relay keeps its entry while the actor lives (a run past its cap publishes
        # nothing more); it drops those of dead actors itself.

    def _loop(self) -> None:
        while not self._stopping.wait(self._look_every_s):
            try:
                # Again at once while a spool has more than a batch waiting (a fast writer).
                while self.flush_due() and not self._stopping.is_set():
                    pass
            except Exception:  # never let one bad flush end every run's storing
                log.exception("output flush failed")

    def flush_due(self) -> bool:
        """Flush the spools that are due, one batch each. True if some have more waiting."""
        now = time.monotonic()
        with self._lock:
            entries = list(self._watched.values())
        due = [entry for entry in entries if _is_due(entry, now)]
        # A look costs a stat() per spool: at most LOOK_SHARE of the time goes to looking.
        self._look_every_s = max(LOOK_EVERY_S, (time.monotonic() - now) / LOOK_SHARE)
        return self._flush(due, now) if due and self._journal is not None else False

    def _flush(self, due: list[_Watched], now: float) -> bool:
        assert self._journal is not None
        taken: list[tuple[_Watched, list[bytes], bool]] = []
        try:
            for entry in due:
                batch = _next_batch(entry.pump)
                if batch is None:
                    continue  # its RunActor has it (its attempt is ending), or it is idle
                taken.append((entry, *batch))
                entry.due_at = now + self._interval_s
                self._check_limit(entry)  # seen from the spool (PostgreSQL down too)
            outputs = [
                OutputBatch(p.run_id, p.attempt, p.stored_bytes, chunks, p.max_output_bytes)
                for p, chunks in ((entry.pump, chunks) for entry, chunks, _ in taken)
            ]
            answers = self._journal.append_outputs(outputs) if outputs else []
            return self._stored(taken, answers, now)
        finally:
            for entry, _, _ in taken:
                entry.pump.lock.release()

    def _stored(
        self,
        taken: list[tuple[_Watched, list[bytes], bool]],
        answers: list[bool | StoreUnavailable],
        now: float,
    ) -> bool:
        more = False
        failed: StoreUnavailable | None = None
        for (entry, chunks, at_end), answer in zip(taken, answers, strict=True):
            if isinstance(answer, StoreUnavailable):  # the spool keeps it all: later
                # Backing off: a flush of a locked row holds up the whole batch (lock_timeout).
                failed, entry.failures = answer, entry.failures + 1
                entry.due_at = now + min(RETRY_S * 2 ** (entry.failures - 1), MAX_RETRY_S)
            elif answer:
                entry.pump.batch_stored(chunks)  # its interval starts again: due_at
                entry.failures = 0
                if not at_end:  # more than a batch was waiting: the rest at once
                    entry.due_at, more = now, True
            else:  # fenced off: another node (or the Supervisor) has the attempt now
                self.unwatch(entry.ref)
                tell_quietly(entry.ref, m.Superseded())
        if failed is not None and not self._store_down:
            log.warning("output not stored yet; will retry", error=failed.message)
        elif failed is None and self._store_down and answers:
            log.info("output stored again")
        self._store_down = failed is not None if answers else self._store_down
        return more

    def _check_limit(self, entry: _Watched) -> None:
        if entry.stops_at_limit and not entry.told_limit and entry.pump.over_limit:
            entry.told_limit = True
            tell_quietly(entry.ref, m.OutputLimitPassed())


def _is_due(entry: _Watched, now: float) -> bool:
    """Whether `entry`'s spool holds output to store now: its interval is up, or a lot waits.
    One stat(); the flush looks again under the pump's lock."""
    try:
        size = os.stat(entry.pump.spool_path).st_size
    except OSError:
        return False
    entry.pump.observed(size)  # output written, stored or not: not silent (stuck_after_s)
    waiting = size - entry.pump.position
    return waiting > 0 and (now >= entry.due_at or waiting >= PENDING_BYTES)


def _next_batch(pump: OutputPump) -> tuple[list[bytes], bool] | None:
    """The pump's next batch, its lock taken (and kept: released once the batch is stored or
    not); None, the lock not taken, if its RunActor holds it, it is retired, or it has
    nothing to store."""
    if not pump.lock.acquire(blocking=False):
        return None
    try:
        chunks, at_end = ([], True) if pump.retired else pump.next_batch()
    except OSError as exc:  # the spool gone or unreadable: its RunActor sees to the rest
        log.warning("spool not read", spool=str(pump.spool_path), error=str(exc))
        chunks, at_end = [], True
    except BaseException:
        pump.lock.release()
        raise
    if not chunks:
        pump.lock.release()
        return None
    return chunks, at_end
