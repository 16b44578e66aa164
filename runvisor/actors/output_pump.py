"""Moves an attempt's output from its spool file to PostgreSQL and Redis, in bounded batches.

The spool file is the buffer: the stored offset advances only after PostgreSQL committed, so an
outage (or a crash) just means the next flush starts from the same place. Bytes, never text.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from runvisor.errors import Fenced
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState

CHUNK_BYTES = 256 * 1024  # one run_output row; also "flush sooner" threshold
# At most this much per transaction and per flush message, so a Stop never waits long behind
# a fast writer; bigger batches amortise PostgreSQL's commit.
BATCH_BYTES = 16 * CHUNK_BYTES
SPOOL_DISCARD_BYTES = 1024 * 1024  # past the output cap, the spool is emptied beyond this


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
        self.position = stored_in_spool  # bytes of the spool already stored
        self.max_output_bytes = max_output_bytes
        self.truncated = base_offset + stored_in_spool >= max_output_bytes
        self.last_output_at = time.monotonic()
        self._journal = journal
        self._live = live
        self._fd: int | None = None
        self._spool_size = stored_in_spool

    @property
    def stored_bytes(self) -> int:
        """Total output bytes of the run stored so far."""
        return self.base_offset + self.position

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def observe(self) -> None:
        """Note output written since the last look, stored or not (PostgreSQL may be down)."""
        try:
            size = os.stat(self.spool_path).st_size
        except FileNotFoundError:
            return
        if size != self._spool_size:
            self._spool_size = size
            self.last_output_at = time.monotonic()

    def silent_for(self, seconds: float) -> bool:
        """Whether no output has been written for more than `seconds` (see observe)."""
        return time.monotonic() - self.last_output_at > seconds

    def flush(self, *, to_eof: bool = False) -> bool:
        """Store new output. True when nothing readable is left behind (or the cap is reached).

        Raises StoreUnavailable when PostgreSQL is down; nothing is lost, the next call retries.
        Raises Fenced when the attempt was superseded.
        """
        while True:
            chunks = self._read_batch()
            if not chunks:
                return True
            size = sum(len(c) for c in chunks)
            cap_room = self.max_output_bytes - self.stored_bytes
            truncated = size > cap_room
            if truncated:
                chunks = _cut(chunks, cap_room)
            ok = self._journal.append_output(
                self.run_id,
                self.attempt,
                offset=self.stored_bytes,
                chunks=chunks,
                truncated=truncated,
            )
            if not ok:
                raise Fenced(f"run {self.run_id} attempt {self.attempt} was superseded")
            stored = sum(len(c) for c in chunks)
            self.position += stored
            self._publish(chunks)
            if truncated:
                self.truncated = True
                return True
            if size < BATCH_BYTES:
                return True
            if not to_eof:
                return False

    def _read_batch(self) -> list[bytes]:
        if self.truncated:
            self._discard_beyond_cap()
            return []
        if self._fd is None:
            try:
                self._fd = os.open(self.spool_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
        chunks: list[bytes] = []
        at = self.position
        while sum(len(c) for c in chunks) < BATCH_BYTES:
            data = os.pread(self._fd, CHUNK_BYTES, at)
            if not data:
                break
            chunks.append(data)
            at += len(data)
        return chunks

    def _discard_beyond_cap(self) -> None:
        """Past the cap nothing more is stored: empty the spool so that a chatty run cannot
        fill the disk. The writers append (O_APPEND), so they go on at the new end."""
        try:
            if os.stat(self.spool_path).st_size > SPOOL_DISCARD_BYTES:
                os.truncate(self.spool_path, 0)
        except FileNotFoundError:
            pass

    def _publish(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        self._live.publish_output(self.run_id, offset=self.stored_bytes, data=data)


def _cut(chunks: list[bytes], room: int) -> list[bytes]:
    kept: list[bytes] = []
    for chunk in chunks:
        if room <= 0:
            break
        kept.append(chunk[:room])
        room -= len(kept[-1])
    return kept
