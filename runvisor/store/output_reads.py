"""A run's stored output as the HTTP side reads it: a byte range, in batches of chunks, with
a bound on the memory all readers of a node take together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from runvisor.errors import NotFound

OUTPUT_READ_BATCH = 8  # chunks (up to 256 KiB each) fetched per round trip of an output read
# Output batches fetched at once per node, by all readers together: however many viewers read
# output, at most this many batches (OUTPUT_READ_BATCH chunks each) are in memory being fetched.
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
        """The run's output in [offset, end), a batch of chunks at a time.

        Each batch takes a connection of its own, so a slow reader holds none while it writes;
        batches are fetched OUTPUT_READS_AT_ONCE at a time per node, so readers cannot
        multiply the memory they take.
        """
        async with self._conn() as conn:
            # Start at the chunk holding `offset`: an index scan on (run_id, byte_offset).
            cursor_at = await _scalar(
                conn,
                "SELECT coalesce(max(byte_offset), 0) FROM run_output"
                " WHERE run_id = %s AND byte_offset <= %s",
                (run_id, offset),
            )
        # Chunks that begin at or past `end` are not fetched at all.
        below = MAX_BYTE_OFFSET if end is None else min(end, MAX_BYTE_OFFSET)
        while end is None or cursor_at < end:
            async with self._output_reads, self._conn() as conn:
                # Binary: bytea comes as its bytes, not as hex text twice their size.
                cur = await conn.execute(
                    "SELECT byte_offset, data FROM run_output"
                    " WHERE run_id = %s AND byte_offset >= %s AND byte_offset < %s"
                    " ORDER BY byte_offset LIMIT %s",
                    (run_id, cursor_at, below, OUTPUT_READ_BATCH),
                    binary=True,
                )
                rows = await cur.fetchall()
            more = len(rows) == OUTPUT_READ_BATCH
            parts: list[memoryview] = []
            for chunk_offset, data in rows:
                lo = max(offset - chunk_offset, 0)
                hi = len(data) if end is None else min(len(data), end - chunk_offset)
                if hi > lo:
                    parts.append(memoryview(data)[lo:hi])
                cursor_at = chunk_offset + len(data)
            piece = b"".join(parts)  # one copy of the batch; the rows are not kept while it is read
            del rows, parts
            if piece:
                yield piece
            if not more:
                return


async def _scalar(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None
