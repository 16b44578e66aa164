"""Moves an attempt's output from its spool file to PostgreSQL and Redis, in bounded batches.

The spool file is the buffer: the stored offset advances only after PostgreSQL committed, so an
outage (or a crash) just means the next flush starts from the same place. Bytes, never text.

Past the run's `max_output_bytes`, only the head (the first half of the limit) and the tail
(the last half) are kept: the pump stores the head, then skips what can only fall in the gap
(everything more than a tail's worth before the spool's end) and stores from there; the journal
records the gap and deletes the chunks the tail moved past. Whatever the run prints, the pump
reads at most one batch at a time, and the spool's stored part is given back to the file
system (a hole: positions stay), so memory, disk and rows per run stay bounded.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from runvisor.errors import Fenced
from runvisor.logs import get_logger
from runvisor.models import OnOutputLimit, Run, output_head_tail
from runvisor.procs.file_space import BLOCK, PunchUnsupported, punch_hole
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.output_writes import HeldOutput

CHUNK_BYTES = 256 * 1024  # one run_output row; also "flush sooner" threshold
# At most this much per transaction and per flush message, so a Stop never waits long behind
# a fast writer; bigger batches amortise PostgreSQL's commit.
BATCH_BYTES = 16 * CHUNK_BYTES
# Stored spool bytes are freed (a hole punched) once this many have piled up.
SPOOL_PUNCH_BYTES = 1024 * 1024

log = get_logger(__name__)
_punch_unsupported_logged = False


class OutputPump:
    def __init__(
        self,
        *,
        run_id: int,
        attempt: int,
        spool_path: Path,
        base_offset: int,
        stored_in_spool: int,
        max_output_bytes: int,
        journal: RunJournal,
        live: LiveState,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.spool_path = spool_path
        self.base_offset = base_offset  # where this attempt's output begins in the run's output
        self.position = stored_in_spool  # spool bytes stored (or skipped: in the gap)
        self.max_output_bytes = max_output_bytes
        self.head_bytes, self.tail_bytes = output_head_tail(max_output_bytes)
        self.last_output_at = time.monotonic()
        self._journal = journal
        self._live = live
        self._fd: int | None = None
        self._spool_size = stored_in_spool
        self._punched = 0  # spool bytes below this are a hole
        self._dropped_punched = 0  # and between the head and this, once the gap is known
        self._can_punch = True
        self.held: HeldOutput | None = None  # see flush(hold_last=True)
        # Held while a batch is read and stored: by the OutputFlusher (the attempt's output
        # while it runs) or the RunActor (the rest, at its end). `retired`: the RunActor's
        # alone from then on, set under the lock.
        self.lock = threading.Lock()
        self.retired = False

    @property
    def stored_bytes(self) -> int:
        """The run's output bytes stored so far, the gap included."""
        return self.base_offset + self.position

    @property
    def produced_bytes(self) -> int:
        """The run's output bytes written so far, as last seen (stored or not)."""
        return max(self.base_offset + self._spool_size, self.stored_bytes)

    @property
    def over_limit(self) -> bool:
        """The run has written more than its max_output_bytes."""
        return self.produced_bytes > self.max_output_bytes

    def retire(self) -> None:
        """From now on the RunActor's alone: the OutputFlusher leaves it (its attempt ends)."""
        with self.lock:
            self.retired = True

    def close(self) -> None:
        with self.lock:
            self.retired = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def observe(self) -> None:
        """Note output written since the last look, stored or not (PostgreSQL may be down)."""
        try:
            size = os.stat(self.spool_path).st_size
        except FileNotFoundError:
            return
        self.observed(size)

    def observed(self, size: int) -> None:
        """The spool's size, as someone saw it now (the OutputFlusher, at each look)."""
        if size != self._spool_size:
            self._spool_size = size
            self.last_output_at = time.monotonic()

    def silent_for(self, seconds: float) -> bool:
        """Whether no output has been written for more than `seconds` (see observe)."""
        return time.monotonic() - self.last_output_at > seconds

    def flush(self, *, to_eof: bool = False, hold_last: bool = False) -> bool:
        """Store new output. True when nothing readable is left behind. `hold_last` (the
        attempt's end, to the spool's end): the last batch is read, not stored, and held in
        `held` for the end's own transaction (held_stored once it committed).

        Raises StoreUnavailable when PostgreSQL is down; nothing is lost, the next call retries.
        Raises Fenced when the attempt was superseded.
        """
        with self.lock:
            self.held = None
            while True:
                chunks, at_end = self.next_batch()
                if not chunks:
                    return True
                if at_end and hold_last:
                    self.held = HeldOutput(self.stored_bytes, chunks, self.max_output_bytes)
                    return True
                ok = self._journal.append_output(
                    self.run_id,
                    self.attempt,
                    offset=self.stored_bytes,
                    chunks=chunks,
                    max_output_bytes=self.max_output_bytes,
                )
                if not ok:
                    raise Fenced(f"run {self.run_id} attempt {self.attempt} was superseded")
                self.batch_stored(chunks)
                if at_end:
                    return True
                if not to_eof:
                    return False

    def next_batch(self) -> tuple[list[bytes], bool]:
        """The next batch to store, read from the spool (`lock` held): up to BATCH_BYTES from
        the position; True when the spool's end was reached. Nothing moves until
        batch_stored."""
        self.observe()
        self._skip_to_tail()
        self._free_dropped()
        return self._read_batch()

    def batch_stored(self, chunks: list[bytes]) -> None:
        """`chunks`, the batch next_batch gave, are committed (`lock` held): past them."""
        self.position += sum(len(c) for c in chunks)
        self._publish(chunks)
        self._free_stored()

    def held_stored(self) -> None:
        """The held batch is committed (with the attempt's end): past it, and published."""
        if self.held is not None:
            self.position += sum(len(chunk) for chunk in self.held.chunks)
            self._publish(list(self.held.chunks))
            self.held = None

    def _skip_to_tail(self) -> None:
        """Past the head, bytes more than a tail's worth before the spool's end can only fall
        in the gap: they are never read (the journal records them as dropped)."""
        if self.stored_bytes < self.head_bytes:
            return
        keep_from = self.base_offset + self._spool_size - self.tail_bytes
        if keep_from > self.stored_bytes:
            self.position = keep_from - self.base_offset

    def _read_batch(self) -> tuple[list[bytes], bool]:
        """Up to BATCH_BYTES from the position, stopping at the head's end (no chunk spans
        it); True when the spool's end was reached."""
        if self._fd is None:
            try:
                # For writing too: fallocate(2) needs it to punch holes; nothing is written.
                self._fd = os.open(self.spool_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return [], True
        want = BATCH_BYTES
        if self.stored_bytes < self.head_bytes:
            want = min(want, self.head_bytes - self.stored_bytes)
        chunks: list[bytes] = []
        at, read = self.position, 0
        while read < want:
            data = os.pread(self._fd, min(CHUNK_BYTES, want - read), at)
            if not data:
                return chunks, True
            chunks.append(data)
            at += len(data)
            read += len(data)
        return chunks, False

    def _free_stored(self) -> None:
        """Give the stored part of the spool back to the file system once a MiB has piled up:
        a run printing without end takes no more disk than what waits to be stored."""
        upto = self.position - self.position % BLOCK
        if upto - self._punched >= SPOOL_PUNCH_BYTES and self._punch(self._punched, upto):
            self._punched = upto

    def _free_dropped(self) -> None:
        """While the head is being stored, a fast writer's bytes between the head and the tail
        will never be read: freed at once, so the spool holds about the limit at most."""
        lo = max(self.head_bytes - self.base_offset, self.position, self._dropped_punched)
        lo += -lo % BLOCK
        hi = self._spool_size - self.tail_bytes
        hi -= hi % BLOCK
        if hi - lo >= SPOOL_PUNCH_BYTES and self._punch(lo, hi):
            self._dropped_punched = hi

    def _punch(self, lo: int, hi: int) -> bool:
        """Free spool bytes [lo, hi); False where the file system cannot."""
        global _punch_unsupported_logged
        if not self._can_punch or self._fd is None:
            return False
        try:
            punch_hole(self._fd, lo, hi - lo)
        except PunchUnsupported:
            self._can_punch = False
            if not _punch_unsupported_logged:
                _punch_unsupported_logged = True
                log.warning(
                    "the spool's file system cannot punch holes: spool files keep their"
                    " stored output until their attempt ends",
                    spool=str(self.spool_path),
                )
            return False
        except OSError as exc:  # freeing disk is a saving, never a reason to fail the run
            self._can_punch = False
            log.warning("spool space not freed", spool=str(self.spool_path), error=str(exc))
            return False
        return True

    def _publish(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        self._live.publish_output(self.run_id, offset=self.stored_bytes, data=data)


def stops_at_limit(run: Run, pump: OutputPump | None) -> bool:
    """Whether the run is to be stopped for its output: on_output_limit "stop", and more than
    max_output_bytes written."""
    return run.on_output_limit == OnOutputLimit.STOP and pump is not None and pump.over_limit
