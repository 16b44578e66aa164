"""History.iter_output against a real PostgreSQL: any byte range, read a small piece at a time.

A reader holds one piece while a client takes it, so a piece must stay small however large
the stored chunks are; and the pieces, joined, must be exactly the range asked for.
"""

from __future__ import annotations

import random

import psycopg
import pytest

from runvisor.store.history import open_history
from runvisor.store.output_reads import OUTPUT_PIECE_BYTES

KIB = 1024
# Chunks as the output pump stores them (up to 256 KiB), and a short one at the end.
CHUNK_SIZES = [256 * KIB, 100 * KIB, 256 * KIB, 7]


def stored_run(database_url: str, chunks: list[tuple[int, bytes]]) -> int:
    """A run whose run_output rows are `chunks`, (byte_offset, data) each."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        command = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000000) RETURNING id"
        ).fetchone()
        assert command is not None
        run = conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes) VALUES (%s, 'true', 1000000)"
            " RETURNING id",
            (command[0],),
        ).fetchone()
        assert run is not None
        for offset, data in chunks:
            conn.execute(
                "INSERT INTO run_output (run_id, byte_offset, data) VALUES (%s, %s, %s)",
                (run[0], offset, data),
            )
    return int(run[0])


def contiguous(data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    chunks, at = [], 0
    for size in sizes:
        chunks.append((at, data[at : at + size]))
        at += size
    return chunks


async def pieces(database_url: str, run_id: int, offset: int, end: int | None) -> list[bytes]:
    async with open_history(database_url, default_max_output_bytes=1000) as history:
        return [piece async for piece in history.iter_output(run_id, offset=offset, end=end)]


RANDOM = random.Random(7).randbytes(sum(CHUNK_SIZES))
TOTAL = len(RANDOM)


@pytest.mark.parametrize(
    "offset,end",
    [
        (0, None),  # the whole output
        (0, TOTAL),
        (OUTPUT_PIECE_BYTES - 1, OUTPUT_PIECE_BYTES + 1),  # across a piece boundary
        (256 * KIB - 3, 256 * KIB + 3),  # across a chunk boundary
        (256 * KIB, 356 * KIB),  # exactly the second chunk
        (100_000, 500_000),  # from inside one chunk to inside the third
        (TOTAL - 1, None),  # the last byte
        (TOTAL - 5, TOTAL + 100),  # past the end
        (TOTAL, None),  # at the end: nothing
        (TOTAL + 10, 2**63 - 1),  # beyond the end: nothing
        (12345, 12345),  # an empty range
    ],
)
async def test_any_range_comes_back_exact_in_small_pieces(
    database_url: str, offset: int, end: int | None
) -> None:
    run_id = stored_run(database_url, contiguous(RANDOM, CHUNK_SIZES))
    got = await pieces(database_url, run_id, offset, end)
    assert b"".join(got) == RANDOM[offset:end]
    assert all(0 < len(piece) <= OUTPUT_PIECE_BYTES for piece in got), [len(p) for p in got]


async def test_a_read_ends_where_bytes_are_missing(database_url: str) -> None:
    # Chunks go missing only when the tail of a run past its limit moves on during a read:
    # the read ends there, and never returns later bytes in their place.
    run_id = stored_run(database_url, [(0, b"abcdefghij"), (20, b"KLMNOPQRST")])
    assert b"".join(await pieces(database_url, run_id, 5, 25)) == b"fghij"
    assert b"".join(await pieces(database_url, run_id, 12, None)) == b""
    assert b"".join(await pieces(database_url, run_id, 20, 25)) == b"KLMNO"


def test_output_is_compressed_with_lz4_where_the_server_has_it(database_url: str) -> None:
    """Migration 0006: lz4, not pglz, for stored chunks (several times cheaper for PostgreSQL
    to compress); a server built without lz4 keeps pglz, and the migration still applies."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_settings"
            " WHERE name = 'default_toast_compression'"
        ).fetchone()
        has_lz4 = bool(row and row[0])
        method = conn.execute(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'run_output'::regclass AND attname = 'data'"
        ).fetchone()
        assert method is not None
        assert method[0] == ("l" if has_lz4 else "")
        # and a compressible chunk stored now is lz4's (pg_column_compression says which)
        run_id = stored_run(database_url, [(0, b"z" * (256 * KIB))])
        used = conn.execute(
            "SELECT pg_column_compression(data) FROM run_output WHERE run_id = %s", (run_id,)
        ).fetchone()
        assert used is not None
        assert used[0] == ("lz4" if has_lz4 else "pglz")
