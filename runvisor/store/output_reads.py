"""A run's stored output as the HTTP side reads it: a byte range, in pieces of 64 KiB, with
a bound on the memory all readers of a node take together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from runvisor.errors import NotFound

# Output is read a piece at a time (part of one chunk of up to 256 KiB): what a reader holds
# while a client takes it.
OUTPUT_PIECE_BYTES = 64 * 1024
# Pieces fetched at once per node, by all readers together.
OUTPUT_READS_AT_ONCE = 4
MAX_BYTE_OFFSET = 2**63 - 1  # PostgreSQL bigint

Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


class OutputReads:
    def __init__(self, connect: Connect) -> None:
        self._conn = connect  # History's: a pooled connection, StoreUnavailable when down
        self._output_reads = asyncio.Semaphore(OUTPUT_READS_AT_ONCE)

    async def read(self, run_id: int, *, offset: int, limit: int) -> bytes:
        """The run's output bytes from `offset`, at most `limit` of them, in memory.

        `limit` is required: a run may have stored gigabytes (iter streams them).
        """
        async with self._conn() as conn:
            exists = await _scalar(conn, "SELECT count(*) FROM runs WHERE id = %s", (run_id,))
        if not exists:
            raise NotFound(f"run {run_id} not found")
        end = offset + limit
        return b"".join([piece async for piece in self.iter(run_id, offset=offset, end=end)])

    async def iter(self, run_id: int, *, offset: int, end: int | None) -> AsyncIterator[bytes]:
        """The run's output in [offset, end), OUTPUT_PIECE_BYTES at a time (see iter_at)."""
        async for _at, piece in self.iter_at(run_id, offset=offset, end=end):
            yield piece
            del piece

    async def iter_at(
        self, run_id: int, *, offset: int, end: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The run's output in [offset, end), OUTPUT_PIECE_BYTES at a time, each piece with
        its offset (past a gap between stored chunks, the next piece starts beyond the last).

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
            start = max(at, chunk_offset)
            if end is not None and start + len(piece) > end:
                piece = piece[: end - start]  # only past a gap between chunks
            at = start + len(piece)
            # On to the next chunk once this one is read to its end.
            chunk_end = chunk_offset + chunk_size
            chunk_at = chunk_end if at >= chunk_end else chunk_offset
            if piece:
                yield start, piece
            del piece  # not held while the next piece is fetched


async def _scalar(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None
