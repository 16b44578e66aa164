"""The head-and-tail limit as the journal applies it (real PostgreSQL): the gap recorded on the
run, its chunks deleted in the same batch, bytes skipped by the pump counted as dropped; and
plan_read, the map of a read around the gap (pure)."""

from __future__ import annotations

import psycopg

from runvisor.store.journal import RunJournal
from runvisor.store.output_reads import gap_marker, plan_read
from tests.fix_journal import claimed_run

NODE = "limit-writes-node"
DATA = bytes(range(256)) * 8  # 2,048 bytes


def state(database_url: str, run_id: int) -> tuple[int, bool, int | None, int | None, list[int]]:
    """(output_bytes, output_truncated, gap start, gap end, the chunks' offsets)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT output_bytes, output_truncated, output_gap_start, output_gap_end"
            " FROM runs WHERE id = %s",
            (run_id,),
        ).fetchone()
        offsets = conn.execute(
            "SELECT byte_offset FROM run_output WHERE run_id = %s ORDER BY byte_offset",
            (run_id,),
        ).fetchall()
    assert row is not None
    return row[0], row[1], row[2], row[3], [o[0] for o in offsets]


def test_past_the_limit_the_tail_moves_on_and_its_chunks_go(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=400)  # head 200, tail 200
    chunks = [DATA[i : i + 100] for i in range(0, 400, 100)]
    assert journal.append_output(run.id, 1, offset=0, chunks=chunks, max_output_bytes=400)
    assert state(database_url, run.id) == (400, False, None, None, [0, 100, 200, 300])
    # 150 bytes more: 550 written, the tail is [350, 550): the chunk at 200 goes, the one at
    # 300 holds tail bytes and stays.
    assert journal.append_output(
        run.id, 1, offset=400, chunks=[DATA[400:550]], max_output_bytes=400
    )
    assert state(database_url, run.id) == (550, True, 200, 350, [0, 100, 300, 400])
    # The pump skipped to 1,800 (what can only fall in the gap): those bytes are dropped too.
    assert journal.append_output(
        run.id, 1, offset=1800, chunks=[DATA[1800:2000]], max_output_bytes=400
    )
    assert state(database_url, run.id) == (2000, True, 200, 1800, [0, 100, 1800])


def test_a_read_maps_around_the_gap() -> None:
    gap = (200, 1800)
    mark = gap_marker(1600)
    assert mark == b"\n[runvisor: 1600 bytes dropped]\n"
    plan = plan_read(output_bytes=2000, gap=None, offset=10, limit=None)
    assert (plan.head_from, plan.head_to, plan.marker, plan.next_offset) == (10, 2000, b"", 2000)
    plan = plan_read(output_bytes=2000, gap=gap, offset=150, limit=100)
    assert (plan.head_from, plan.head_to, plan.tail_from, plan.tail_to) == (150, 200, 1800, 1850)
    assert plan.marker == mark and plan.marker_at == 50 and plan.size == 100 + len(mark)
    assert plan.next_offset == 1850
    plan = plan_read(output_bytes=2000, gap=gap, offset=0, limit=200)  # up to the gap: no marker
    assert (plan.marker, plan.next_offset, plan.size) == (b"", 200, 200)
    plan = plan_read(output_bytes=2000, gap=gap, offset=500, limit=None)  # inside the gap
    assert (plan.head_to - plan.head_from, plan.marker, plan.tail_from, plan.tail_to) == (
        0, mark, 1800, 2000,
    )  # fmt: skip
    plan = plan_read(output_bytes=2000, gap=gap, offset=1900, limit=50)  # within the tail
    assert (plan.head_from, plan.head_to, plan.marker, plan.next_offset) == (1900, 1950, b"", 1950)
    plan = plan_read(output_bytes=2000, gap=gap, offset=5000, limit=None)  # past the end
    assert (plan.size, plan.next_offset) == (0, 5000)
