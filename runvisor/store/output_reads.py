"""A run's stored output as the HTTP side reads it: a byte range, in pieces of 64 KiB, with
a bound on the memory all readers of a node take together.

Offsets are positions in everything the run wrote. Past its max_output_bytes a run keeps the
head and the tail only; a read that reaches past the gap between them (ReadPlan) returns the
head's bytes, one marker line, then the tail's: `limit` counts output bytes, not the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg

from runvisor.store.connection import AsyncConnect

# Output is read a piece at a time (part of one chunk of up to 256 KiB): what a reader holds
# while a client takes it.
OUTPUT_PIECE_BYTES = 64 * 1024
# Pieces fetched at once per node, by all readers together.
OUTPUT_READS_AT_ONCE = 4
MAX_BYTE_OFFSET = 2**63 - 1  # PostgreSQL bigint


def gap_marker(dropped: int) -> bytes:
    """The line a read returns in place of the dropped bytes."""
    return f"\n[runvisor: {dropped} bytes dropped]\n".encode()


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What a read returns: output bytes [head_from, head_to), then `marker`, then output bytes
    [tail_from, tail_to). Without a gap in reach, the marker is empty and the second range too.
    """

    head_from: int
    head_to: int
    marker: bytes
    tail_from: int
    tail_to: int

    @property
    def size(self) -> int:
        """The body's length in bytes, the marker included."""
        return self.head_to - self.head_from + len(self.marker) + self.tail_to - self.tail_from

    @property
    def next_offset(self) -> int:
        """The offset a reader continues from."""
        return self.tail_to if self.marker or self.tail_to > self.tail_from else self.head_to

    @property
    def marker_at(self) -> int | None:
        """The marker's position in the body, if it holds one."""
        return self.head_to - self.head_from if self.marker else None


def plan_read(
    *, output_bytes: int, gap: tuple[int, int] | None, offset: int, limit: int | None
) -> ReadPlan:
    """At most `limit` output bytes (None: to the end) from `offset`, past the gap if there is
    one: a read starting before the gap's end that reaches it returns the marker line, then
    the tail; one starting inside the gap thus starts with the marker."""
    wanted = MAX_BYTE_OFFSET if limit is None else limit
    if gap is None or offset >= gap[1] or offset + wanted <= gap[0]:
        end = max(min(output_bytes, offset + wanted), offset)
        return ReadPlan(offset, end, b"", end, end)
    start, end = gap
    head_to = max(offset, start)
    rest = wanted - (head_to - offset)
    tail_to = max(min(output_bytes, end + rest), end)
    return ReadPlan(offset, head_to, gap_marker(end - start), end, tail_to)


class OutputReads:
    def __init__(self, connect: AsyncConnect) -> None:
        self._conn = connect  # History's: a pooled connection, StoreUnavailable when down
        self._output_reads = asyncio.Semaphore(OUTPUT_READS_AT_ONCE)

    async def iter_plan(self, run_id: int, plan: ReadPlan) -> AsyncIterator[bytes]:
        """The body of `plan`, a piece at a time (see iter)."""
        if plan.head_to > plan.head_from:
            async for piece in self.iter(run_id, offset=plan.head_from, end=plan.head_to):
                yield piece
        if plan.marker:
            yield plan.marker
        if plan.tail_to > plan.tail_from:
            async for piece in self.iter(run_id, offset=plan.tail_from, end=plan.tail_to):
                yield piece

    async def iter(self, run_id: int, *, offset: int, end: int | None) -> AsyncIterator[bytes]:
        """The run's output in [offset, end), OUTPUT_PIECE_BYTES at a time (see iter_at)."""
        async for _at, piece in self.iter_at(run_id, offset=offset, end=end):
            yield piece
            del piece

    async def iter_at(
        self, run_id: int, *, offset: int, end: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The run's output in [offset, end), OUTPUT_PIECE_BYTES at a time, each piece with
        its offset. Where stored bytes are missing (the tail of a run past its limit moved on
        meanwhile), the pieces end.

        A reader holds one piece while it writes it, and no connection: each fetch takes a
        connection of its own, and fetches run OUTPUT_READS_AT_ONCE at a time per node, so
        readers cannot multiply the memory they take. The consumer must drop each piece before
        asking for the next.
        """
        async with self._conn() as conn:
            # Start at the chunk holding `offset`: an index scan on (run_id, byte_offset).
            chunk_at = await _scalar(
                conn,
                "SELECT coalesce(max(byte_offset), 0) FROM run_output"
                " WHERE run_id = %s AND byte_offset <= %s",
                (run_id, offset),
            )
        # Chunks that begin at or past `end` are not fetched at all.
        below = MAX_BYTE_OFFSET if end is None else min(end, MAX_BYTE_OFFSET)
        at = offset  # the next byte to yield
        while end is None or at < end:
            size = OUTPUT_PIECE_BYTES if end is None else min(OUTPUT_PIECE_BYTES, end - at)
            # Binary: bytea comes as its bytes, not as hex text twice their size. Only the piece
            # leaves PostgreSQL (substring of a chunk), and closing the cursor frees libpq's
            # copy of it before it is written.
            async with (
                self._output_reads,
                self._conn() as conn,
                conn.cursor(binary=True) as cur,
            ):
                await cur.execute(
                    "SELECT byte_offset, octet_length(data), substring(data"
                    " FROM least(greatest(%s - byte_offset, 0), octet_length(data))::int + 1"
                    " FOR %s)"
                    " FROM run_output"
                    " WHERE run_id = %s AND byte_offset >= %s AND byte_offset < %s"
                    " ORDER BY byte_offset LIMIT 1",
                    (at, size, run_id, chunk_at, below),
                )
                row = await cur.fetchone()
            if row is None:
                return
            chunk_offset, chunk_size, piece = row
            del row
            if chunk_offset > at:
                # Bytes missing: dropped meanwhile (the tail of a run past its limit moved on).
                # Never bytes of another offset in their place: the read ends here.
                return
            start, at = at, at + len(piece)
            # On to the next chunk once this one is read to its end.
            chunk_end = chunk_offset + chunk_size
            chunk_at = chunk_end if at >= chunk_end else chunk_offset
            if piece:
                yield start, piece
            del piece  # not held while the next piece is fetched


async def _scalar(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None
