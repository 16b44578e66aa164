"""The journal's group commit, against the real PostgreSQL of the test: many RunActors' writes
share a transaction, each keeps its own fence and answer, a locked row fails only its own
write, and nothing is answered before its batch has committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from runvisor.errors import StoreUnavailable
from runvisor.models import Run, RunStatus
from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.journal_writes import EndAttempt
from runvisor.store.output_writes import ARRAY_INSERT_MAX_BYTES
from tests.fix_journal import claimed_run, waiting_on_a_lock
from tests.polling import wait_until

NO_CAP = 2**40  # max_output_bytes: no byte is dropped

NODE = "group-commit-node"


@pytest.fixture
def batches() -> list[tuple[int, float]]:
    return []


@pytest.fixture
def journal(database_url: str, batches: list[tuple[int, float]]) -> Iterator[RunJournal]:
    journal = open_journal(
        database_url, node_id=NODE, on_batch=lambda size, s: batches.append((size, s))
    )
    yield journal
    journal.close()


def stored_output(database_url: str, run_id: int) -> tuple[bytes, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT byte_offset, data FROM run_output WHERE run_id = %s ORDER BY byte_offset",
            (run_id,),
        ).fetchall()
        total = conn.execute("SELECT output_bytes FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert total is not None
    data = b""
    for offset, chunk in rows:
        assert offset == len(data), "a gap or an overlap in the stored output"
        data += bytes(chunk)
    return data, total[0]


def test_writes_of_many_runs_share_transactions_and_each_is_stored_exactly(
    database_url: str, journal: RunJournal, batches: list[tuple[int, float]]
) -> None:
    runs = [claimed_run(database_url, journal, max_output_bytes=10**6) for _ in range(24)]
    lines = 40

    def write_run(run: Run) -> bytes:
        journal.start_attempt(run, pid=10_000 + run.id, start_ticks=1)
        offset, printed = 0, b""
        for i in range(lines):
            chunk = f"run {run.id} line {i}\n".encode()
            assert journal.append_output(
                run.id, run.attempt, offset=offset, chunks=[chunk], max_output_bytes=NO_CAP
            )
            offset += len(chunk)
            printed += chunk
        stored = journal.end_attempt(
            run,
            exit_code=0,
            signal=None,
            reason="exited",
            leftovers_killed=0,
            run_status=RunStatus.SUCCEEDED,
            run_reason=None,
        )
        assert stored is RunStatus.SUCCEEDED
        return printed

    batches.clear()
    with ThreadPoolExecutor(len(runs)) as pool:
        printed = list(pool.map(write_run, runs))

    for run, expected in zip(runs, printed, strict=True):
        assert stored_output(database_url, run.id) == (expected, len(expected))
        final = journal.get_run(run.id)
        assert final is not None and final.status is RunStatus.SUCCEEDED
        assert final.pid == 10_000 + run.id and final.attempts[0].pid == 10_000 + run.id
    writes = len(runs) * (lines + 2)
    assert sum(size for size, _ in batches) == writes
    # Concurrent writers were served by fewer transactions than writes: that is the point.
    assert len(batches) < writes and max(size for size, _ in batches) > 1, batches


def test_a_fenced_write_answers_lost_and_its_batch_neighbours_are_stored(
    database_url: str, journal: RunJournal
) -> None:
    ours, taken = claimed_run(database_url, journal), claimed_run(database_url, journal)
    with psycopg.connect(database_url, autocommit=True) as conn:  # another node took it over
        conn.execute("UPDATE runs SET node = 'other-node' WHERE id = %s", (taken.id,))

    barrier = threading.Barrier(2)

    def append(run: Run) -> bool:
        barrier.wait()
        return journal.append_output(
            run.id, run.attempt, offset=0, chunks=[b"bytes\n"], max_output_bytes=NO_CAP
        )

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(append, [ours, taken]))
    assert answers == [True, False]
    assert stored_output(database_url, ours.id) == (b"bytes\n", 6)
    assert stored_output(database_url, taken.id) == (b"", 0)


def test_the_same_range_written_twice_is_stored_once(
    database_url: str, journal: RunJournal
) -> None:
    # The Supervisor's closer and a woken RunActor may store the same spool range, even in one
    # batch: bytes below the stored end are skipped.
    run = claimed_run(database_url, journal)
    barrier = threading.Barrier(3)

    def append(chunks: list[bytes]) -> bool:
        barrier.wait()
        return journal.append_output(
            run.id, run.attempt, offset=0, chunks=chunks, max_output_bytes=NO_CAP
        )

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(append, [[b"abc", b"def"], [b"abcdef"], [b"abcdefgh"]]))
    assert answers == [True, True, True]
    assert stored_output(database_url, run.id) == (b"abcdefgh", 8)


def test_a_row_locked_elsewhere_fails_only_its_own_write(
    database_url: str, journal: RunJournal
) -> None:
    locked, free = claimed_run(database_url, journal), claimed_run(database_url, journal)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (locked.id,))
        results: dict[str, object] = {}

        def append(run: Run, key: str) -> None:
            try:
                results[key] = journal.append_output(
                    run.id, run.attempt, offset=0, chunks=[b"x\n"], max_output_bytes=NO_CAP
                )
            except StoreUnavailable as exc:
                results[key] = exc

        stuck = threading.Thread(target=append, args=(locked, "locked"))
        stuck.start()
        started = time.monotonic()
        append(free, "free")
        # The free run's write is answered once the lock timeout has split the batch (or at
        # once, if it went alone): never after the holder lets go.
        assert results["free"] is True
        assert time.monotonic() - started < 8
        stuck.join(timeout=10)
        assert isinstance(results["locked"], StoreUnavailable)
        assert stored_output(database_url, free.id) == (b"x\n", 2)
        assert stored_output(database_url, locked.id) == (b"", 0)
        holder.rollback()
    # Retried once the row is free, as a RunActor retries.
    assert journal.append_output(
        locked.id, locked.attempt, offset=0, chunks=[b"x\n"], max_output_bytes=NO_CAP
    )
    assert stored_output(database_url, locked.id) == (b"x\n", 2)


def test_no_answer_before_the_commit(database_url: str, journal: RunJournal) -> None:
    # The batch waits on a lock held by this test's transaction; its write is not answered
    # (and not visible) while it waits, and is answered once it committed.
    run = claimed_run(database_url, journal)
    other = claimed_run(database_url, journal)
    answered = threading.Event()

    def append() -> None:
        while True:  # as a RunActor does: a lock timeout is retried
            try:
                journal.append_output(
                    run.id, run.attempt, offset=0, chunks=[b"late\n"], max_output_bytes=NO_CAP
                )
            except StoreUnavailable:
                continue
            answered.set()
            return

    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run.id,))
        writer = threading.Thread(target=append)
        writer.start()
        wait_until(lambda: waiting_on_a_lock(database_url), 10, "the batch to wait on the lock")
        assert not answered.is_set()
        assert stored_output(database_url, run.id) == (b"", 0)
        holder.rollback()
    writer.join(timeout=10)
    assert answered.is_set()
    assert stored_output(database_url, run.id) == (b"late\n", 5)
    assert stored_output(database_url, other.id) == (b"", 0)


def test_writes_queued_at_close_are_performed_before_it_returns(database_url: str) -> None:
    journal = open_journal(database_url, node_id=NODE)
    runs = [claimed_run(database_url, journal) for _ in range(5)]
    results: dict[int, bool | StoreUnavailable] = {}

    def append(run: Run) -> None:
        try:
            results[run.id] = journal.append_output(
                run.id, run.attempt, offset=0, chunks=[b"z"], max_output_bytes=NO_CAP
            )
        except StoreUnavailable as exc:  # the first one, should the lock outlast its timeout
            results[run.id] = exc

    with psycopg.connect(database_url) as holder:
        # The first batch waits on this lock; the other writes queue up behind it.
        holder.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (runs[0].id,))
        writers = [threading.Thread(target=append, args=(run,)) for run in runs]
        writers[0].start()
        wait_until(lambda: waiting_on_a_lock(database_url), 10, "the first batch to wait")
        for writer in writers[1:]:
            writer.start()
        wait_until(lambda: journal.queued_writes() == 4, 10, "the other writes to queue")
        closer = threading.Thread(target=journal.close)
        closer.start()
        holder.rollback()
    closer.join(timeout=20)
    for writer in writers:
        writer.join(timeout=10)
    assert {run.id: results[run.id] for run in runs[1:]} == {run.id: True for run in runs[1:]}
    for run in runs[1:]:
        assert stored_output(database_url, run.id) == (b"z", 1)
    with pytest.raises(StoreUnavailable):
        journal.append_output(runs[0].id, 1, offset=1, chunks=[b"z"], max_output_bytes=NO_CAP)


def test_large_and_small_batches_are_stored_byte_exact(
    database_url: str, journal: RunJournal
) -> None:
    # Past ARRAY_INSERT_MAX_BYTES the chunks go as pipelined rows, below it as arrays.
    big, small = (
        claimed_run(database_url, journal, max_output_bytes=10**7),
        claimed_run(database_url, journal),
    )
    chunks = [bytes(range(256)) * 2400, b"\0\xff" * 300_000, b"tail"]
    assert sum(map(len, chunks)) > ARRAY_INSERT_MAX_BYTES
    assert journal.append_output(big.id, 1, offset=0, chunks=chunks, max_output_bytes=NO_CAP)
    assert journal.append_output(
        small.id, 1, offset=0, chunks=[b"a\0b", b"\n"], max_output_bytes=NO_CAP
    )
    assert stored_output(database_url, big.id) == (b"".join(chunks), sum(map(len, chunks)))
    assert stored_output(database_url, small.id) == (b"a\0b\n", 4)


def test_ends_of_many_runs_in_one_batch_keep_each_fence_and_stop(
    database_url: str, journal: RunJournal
) -> None:
    plain, stopping, restarting, taken, twice = (
        claimed_run(database_url, journal) for _ in "12345"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET stop_requested_at = now(), stop_requested_by = 'tester' WHERE id = %s",
            (stopping.id,),
        )
        conn.execute("UPDATE runs SET node = 'other-node' WHERE id = %s", (taken.id,))

    def end(run: Run, status: RunStatus, delay: float | None = None, code: int = 0) -> EndAttempt:
        return EndAttempt(
            NODE,
            f"node:{NODE}",
            run.id,
            run.attempt,
            exit_code=code,
            signal=None,
            reason="exited",
            leftovers_killed=0,
            run_status=status,
            run_reason=None,
            restart_delay_s=delay,
        )

    writes = [
        end(plain, RunStatus.SUCCEEDED),
        end(stopping, RunStatus.FAILED, code=1),
        end(restarting, RunStatus.RESTARTING, delay=30.0, code=1),
        end(taken, RunStatus.SUCCEEDED),
        end(twice, RunStatus.SUCCEEDED),
        end(twice, RunStatus.FAILED, code=9),  # a second end of the same attempt: fenced
    ]
    with psycopg.connect(database_url) as conn, conn.transaction():
        answers = EndAttempt.write_all(conn, writes)
    assert answers == [
        RunStatus.SUCCEEDED,
        RunStatus.STOPPED,  # PostgreSQL has the last word on a stop
        RunStatus.RESTARTING,
        None,  # another node holds the run
        RunStatus.SUCCEEDED,
        None,
    ]
    with psycopg.connect(database_url) as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT r.id, r.status, r.exit_code, r.reason, r.restart_count,"
                " r.next_attempt_at IS NOT NULL, a.finished_at IS NOT NULL, a.exit_code"
                " FROM runs r JOIN run_attempts a ON a.run_id = r.id AND a.attempt = r.attempt"
                " WHERE r.id = ANY(%s)",
                ([plain.id, stopping.id, restarting.id, taken.id, twice.id],),
            ).fetchall()
        )
        audited = conn.execute(
            "SELECT run_id, action FROM audit WHERE run_id = ANY(%s) AND action LIKE 'run.%%'"
            " ORDER BY run_id",
            ([plain.id, stopping.id, restarting.id, taken.id, twice.id],),
        ).fetchall()
    assert rows[plain.id] == ("succeeded", 0, None, 0, False, True, 0)
    assert rows[stopping.id] == ("stopped", 1, "stopped by tester", 0, False, True, 1)
    assert rows[restarting.id] == ("restarting", 1, None, 1, True, True, 1)
    assert rows[taken.id] == ("running", None, None, 0, False, False, None)
    assert rows[twice.id] == ("succeeded", 0, None, 0, False, True, 0)
    assert audited == [
        (plain.id, "run.succeeded"),
        (stopping.id, "run.stopped"),
        (restarting.id, "run.restarting"),
        (twice.id, "run.succeeded"),
    ]
