"""Stop requests recorded many at once (store/stop_requests.py), against a real PostgreSQL: what
one statement records for many askers is what one statement each recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from runvisor.errors import StoreUnavailable
from runvisor.models import Run
from runvisor.store.history import History
from runvisor.store.journal import RunJournal
from tests.fix_journal import claimed_run, waiting_on_a_lock
from tests.store.fix_history import CountingCursor, counting_history

NODE = "stop-requests-test-node"


def queued_run_id(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "WITH c AS (INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000)"
            " RETURNING id) INSERT INTO runs (command_id, code, max_output_bytes)"
            " SELECT id, 'true', 1000 FROM c RETURNING id"
        ).fetchone()
    assert row is not None
    return int(row[0])


def stop_audit(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT actor, run_id, detail FROM audit WHERE action = 'run.stop' ORDER BY id"
        ).fetchall()


async def test_stops_asked_at_once_are_recorded_in_one_statement_as_one_each_would(
    database_url: str, journal: RunJournal
) -> None:
    started = [claimed_run(database_url, journal) for _ in range(6)]
    queued = queued_run_id(database_url)  # stopped another way (History.stop_queued_run)
    twice = started[0]
    asks = [(run.id, f"op-{i}", float(i)) for i, run in enumerate(started)]
    asks += [(queued, "op-queued", 1.0), (987654, "op-none", 1.0), (twice.id, "op-again", 9.0)]
    pool, history = await counting_history(database_url)
    async with pool:
        before = CountingCursor.statements
        answers = await asyncio.gather(
            *(history.stop_requests.record(rid, actor=by, grace_s=g) for rid, by, g in asks)
        )
        assert CountingCursor.statements - before == 1
    by_asker = dict(zip([by for _rid, by, _g in asks], answers, strict=True))
    assert by_asker["op-queued"] is None and by_asker["op-none"] is None
    for i, run in enumerate(started):
        answer = by_asker[f"op-{i}"]
        assert isinstance(answer, Run) and answer.id == run.id
        assert answer.stop_requested_at is not None and answer.attempts[0].attempt == 1
    # Asked twice: the first asker is kept, the last grace counts; both are told the run.
    again = by_asker["op-again"]
    assert again is not None and again.stop_requested_by == "op-0" and again.stop_grace_s == 9.0
    assert by_asker["op-1"] is not None and by_asker["op-1"].stop_requested_by == "op-1"
    assert by_asker["op-5"] is not None and by_asker["op-5"].stop_grace_s == 5.0
    expected = [(f"op-{i}", run.id, {"grace_s": float(i)}) for i, run in enumerate(started)]
    assert stop_audit(database_url) == [*expected, ("op-again", twice.id, {"grace_s": 9.0})]


async def test_a_stop_goes_at_once_and_those_asked_meanwhile_go_together_next(
    database_url: str, journal: RunJournal
) -> None:
    first, *others = [claimed_run(database_url, journal) for _ in range(5)]
    pool, history = await counting_history(database_url)
    async with pool:
        before = CountingCursor.statements
        with psycopg.connect(database_url) as holder:  # holds the first stop's write
            holder.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (first.id,))
            alone = asyncio.ensure_future(
                history.stop_requests.record(first.id, actor="first", grace_s=1.0)
            )
            deadline = time.monotonic() + 10
            while not await asyncio.to_thread(waiting_on_a_lock, database_url):
                assert time.monotonic() < deadline, "the first stop's statement never waited"
                await asyncio.sleep(0.01)
            later = asyncio.gather(
                *(history.stop_requests.record(r.id, actor="later", grace_s=2.0) for r in others)
            )
            await asyncio.sleep(0)  # (all of them asked while the first is under way)
            assert not alone.done()
            holder.commit()
            assert (await alone) is not None
            answers = await later
        assert CountingCursor.statements - before == 2
    assert [run.id for run in answers if run is not None] == [run.id for run in others]
    assert {run.stop_requested_by for run in answers if run is not None} == {"later"}
    assert len(stop_audit(database_url)) == 5


async def test_postgresql_unreachable_fails_every_asker_and_records_nothing(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal)
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"
    async with AsyncConnectionPool(unreachable, open=False, timeout=0.5) as pool:
        history = History(pool, default_max_output_bytes=1000)
        answers = await asyncio.gather(
            *(history.stop_requests.record(run.id, actor="op", grace_s=1.0) for _ in range(3)),
            return_exceptions=True,
        )
        assert [type(answer) for answer in answers] == [StoreUnavailable] * 3
    async with AsyncConnectionPool(database_url, open=False) as pool:  # up again: recorded
        history = History(pool, default_max_output_bytes=1000)
        answer = await history.stop_requests.record(run.id, actor="op", grace_s=1.0)
    assert answer is not None and answer.stop_requested_by == "op"
    assert stop_audit(database_url) == [("op", run.id, {"grace_s": 1.0})]
