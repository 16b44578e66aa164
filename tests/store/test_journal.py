"""The journal against a real PostgreSQL: output writes of two writers, a statement cancelled
by a timeout, and calls blocked on a locked row or a paused server marked as store waits."""

from __future__ import annotations

import re
import threading

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from runvisor.errors import StoreUnavailable
from runvisor.models import Run, RunStatus
from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.output_writes import HeldOutput
from runvisor.store.waits import StoreWaits
from tests.fix_journal import claimed_run, waiting_on_a_lock
from tests.fix_metrics import moved, scrape_in_process, value
from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.polling import wait_until

NO_CAP = 2**40  # max_output_bytes: no byte is dropped

NODE = "journal-test-node"
DATA = bytes(range(256)) * 4


def stored(database_url: str, run_id: int) -> tuple[int, bytes]:
    """(runs.output_bytes, the run_output rows joined in offset order)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT output_bytes FROM runs WHERE id = %s", (run_id,)).fetchone()
        chunks = conn.execute(
            "SELECT data FROM run_output WHERE run_id = %s ORDER BY byte_offset", (run_id,)
        ).fetchall()
    assert row is not None
    return row[0], b"".join(c[0] for c in chunks)


def test_a_late_writer_of_a_stored_range_neither_shrinks_output_bytes_nor_repeats_bytes(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    assert journal.append_output(run.id, 1, offset=0, chunks=[DATA[:100]], max_output_bytes=NO_CAP)
    # A second writer that is behind: part of the stored range again...
    assert journal.append_output(run.id, 1, offset=0, chunks=[DATA[:60]], max_output_bytes=NO_CAP)
    assert stored(database_url, run.id) == (100, DATA[:100])
    # ...then chunks across the stored end: only the new bytes are added.
    assert journal.append_output(
        run.id, 1, offset=60, chunks=[DATA[60:90], DATA[90:130]], max_output_bytes=NO_CAP
    )
    assert stored(database_url, run.id) == (130, DATA[:130])


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
def test_a_statement_cancelled_by_a_timeout_is_unavailable_and_changes_nothing(
    database_url: str, journal: RunJournal, setting: str
) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    options = {"options": f"-c {setting}=300"}
    with ConnectionPool(database_url, min_size=1, max_size=1, kwargs=options, open=True) as pool:
        impatient = RunJournal(pool, node_id=NODE)
        with psycopg.connect(database_url) as locker:
            locker.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run.id,))
            with pytest.raises(StoreUnavailable, match=setting.replace("_", " ")):
                impatient.append_output(
                    run.id, 1, offset=0, chunks=[DATA[:10]], max_output_bytes=NO_CAP
                )
        assert stored(database_url, run.id) == (0, b"")
        # The lock is gone: the retry stores the same bytes, once.
        assert impatient.append_output(
            run.id, 1, offset=0, chunks=[DATA[:10]], max_output_bytes=NO_CAP
        )
        assert stored(database_url, run.id) == (10, DATA[:10])


def test_a_call_blocked_on_a_locked_row_is_a_store_wait_until_it_returns(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    waits = StoreWaits()
    waiting_journal = open_journal(database_url, node_id=NODE, store_waits=waits)
    results: list[bool] = []

    def writer() -> None:
        waits.register("writer")
        results.append(
            waiting_journal.append_output(
                run.id, 1, offset=0, chunks=[DATA[:5]], max_output_bytes=NO_CAP
            )
        )

    try:
        with psycopg.connect(database_url) as locker:
            locker.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run.id,))
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            since = wait_until(lambda: waits.of("writer").waiting_since, 5, "the writer to wait")
            wait_until(
                lambda: waiting_on_a_lock(database_url),
                5,
                "the writer's statement to wait for the lock",
            )
            assert not results and waits.of("writer").waiting_since == since
        thread.join(10)
        assert results == [True]
        after = waits.of("writer")
        assert after.waiting_since is None and after.left_at is not None and after.left_at > since
    finally:
        waiting_journal.close()


def test_a_call_to_a_paused_server_waits_marked_and_completes_after_the_resume(
    database_url: str, pg_proxy: TcpProxy
) -> None:
    waits = StoreWaits()
    proxied = open_journal(
        proxied_database_url(database_url, pg_proxy), node_id=NODE, store_waits=waits
    )
    direct = open_journal(database_url, node_id=NODE)
    run = claimed_run(database_url, direct)
    results: list[bool] = []
    try:
        proxied.ping()  # a connection through the proxy, open before the pause
        pg_proxy.pause()

        def writer() -> None:
            waits.register("writer")
            results.append(
                proxied.append_output(run.id, 1, offset=0, chunks=[b"hi"], max_output_bytes=NO_CAP)
            )

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        since = wait_until(lambda: waits.of("writer").waiting_since, 5, "the writer to wait")
        thread.join(3)  # longer than the pool's own timeout: the call hangs, as with SIGSTOP
        assert thread.is_alive() and not results
        assert stored(database_url, run.id) == (0, b"")
        pg_proxy.resume()
        thread.join(15)
        assert results == [True] and stored(database_url, run.id) == (2, b"hi")
        assert waits.of("writer").waiting_since is None
        assert (waits.of("writer").left_at or 0) > since
    finally:
        pg_proxy.resume()
        proxied.close()
        direct.close()


def test_each_write_is_observed_as_a_batch_and_only_new_output_bytes_are_counted(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    before = scrape_in_process()
    journal.start_attempt(run, pid=12345, start_ticks=1)
    assert journal.append_output(run.id, 1, offset=0, chunks=[DATA[:100]], max_output_bytes=NO_CAP)
    # Behind the stored end by 40 bytes: 30 bytes are new, and only they are counted.
    assert journal.append_output(
        run.id, 1, offset=60, chunks=[DATA[60:130]], max_output_bytes=NO_CAP
    )
    stored_status = _end(journal, run, None)
    after = scrape_in_process()
    assert stored_status is RunStatus.SUCCEEDED
    assert moved(before, after, "runvisor_journal_batch_size_count") == 4
    # One caller at a time: each write is a batch of its own (the size counts writes).
    assert moved(before, after, "runvisor_journal_batch_size_sum") == 4
    assert moved(before, after, "runvisor_journal_batch_seconds_count") == 4
    assert moved(before, after, "runvisor_journal_batch_seconds_sum") > 0
    assert moved(before, after, "runvisor_output_stored_bytes_total") == 130
    assert value(after, "runvisor_store_up", {"store": "postgres"}) == 1


def test_postgres_reachability_is_what_the_last_call_found(
    database_url: str, pg_proxy: TcpProxy
) -> None:
    journal = open_journal(proxied_database_url(database_url, pg_proxy), node_id=NODE)
    up = {"store": "postgres"}
    try:
        journal.ping()
        assert value(scrape_in_process(), "runvisor_store_up", up) == 1
        pg_proxy.cut()
        with pytest.raises(StoreUnavailable):
            journal.ping()
        assert value(scrape_in_process(), "runvisor_store_up", up) == 0
        pg_proxy.restore()
        wait_until(lambda: _answers(journal), 15, "PostgreSQL to answer again")
        assert value(scrape_in_process(), "runvisor_store_up", up) == 1
    finally:
        journal.close()


def _answers(journal: RunJournal) -> bool:
    try:
        journal.ping()
    except StoreUnavailable:
        return False
    return True


def test_a_burst_of_queued_runs_is_claimed_oldest_first_a_batch_per_transaction(
    database_url: str, journal: RunJournal
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 10) RETURNING id"
        ).fetchone()
        assert row is not None
        ids = [
            r[0]
            for r in conn.execute(
                "INSERT INTO runs (command_id, code, max_output_bytes)"
                " SELECT %s, 'true', 10 FROM generate_series(1, 5) RETURNING id",
                (row[0],),
            ).fetchall()
        ]
        # A run whose stop was requested is never claimed.
        conn.execute("UPDATE runs SET stop_requested_at = now() WHERE id = %s", (ids[1],))
    first = journal.claim_queued(limit=3, boot_id="b")
    assert [r.id for r in first] == [ids[0], ids[2], ids[3]]
    markers = {r.attempts[0].process_marker for r in first}
    assert len(markers) == 3 and all(re.fullmatch("[0-9a-f]{32}", m) for m in markers)
    for run in first:
        assert run.status is RunStatus.RUNNING and run.node == NODE and run.attempt == 1
        assert [(a.attempt, a.node, a.output_offset) for a in run.attempts] == [(1, NODE, 0)]
    assert [r.id for r in journal.claim_queued(limit=64, boot_id="b")] == [ids[4]]
    assert journal.claim_queued(limit=64, boot_id="b") == []
    assert journal.claim_queued(limit=0, boot_id="b") == []


def _end(journal: RunJournal, run: Run, output: HeldOutput | None) -> RunStatus | None:
    return journal.end_attempt(
        run,
        exit_code=0,
        signal=None,
        reason="exited",
        leftovers_killed=0,
        run_status=RunStatus.SUCCEEDED,
        run_reason=None,
        output=output,
    )


def test_the_last_output_and_the_end_are_one_transaction(
    database_url: str, journal: RunJournal
) -> None:
    """A short run's end costs one commit: its last batch of output is stored with it (after
    what was stored before, the new bytes only, counted once)."""
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    assert journal.append_output(run.id, 1, offset=0, chunks=[DATA[:100]], max_output_bytes=NO_CAP)
    before = scrape_in_process()
    held = HeldOutput(100, [DATA[100:300], DATA[300:301]], NO_CAP)
    assert _end(journal, run, held) is RunStatus.SUCCEEDED
    after = scrape_in_process()
    assert moved(before, after, "runvisor_journal_batch_size_count") == 1  # one transaction
    assert moved(before, after, "runvisor_output_stored_bytes_total") == 201
    assert stored(database_url, run.id) == (301, DATA[:301])
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM runs WHERE id = %s", (run.id,)).fetchone()
    assert row == ("succeeded",)


def test_a_fenced_end_with_output_stores_neither(database_url: str, journal: RunJournal) -> None:
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    with psycopg.connect(database_url, autocommit=True) as conn:  # taken over by another node
        conn.execute("UPDATE runs SET node = 'another-node' WHERE id = %s", (run.id,))
    assert _end(journal, run, HeldOutput(0, [DATA[:50]], NO_CAP)) is None
    assert stored(database_url, run.id) == (0, b"")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, (SELECT finished_at FROM run_attempts WHERE run_id = %s)"
            " FROM runs WHERE id = %s",
            (run.id, run.id),
        ).fetchone()
    assert row == ("running", None)


def test_ends_with_output_of_many_runs_share_a_batch(
    database_url: str, journal: RunJournal
) -> None:
    """Runs ending at once: their outputs and ends in one transaction, each its own answer."""
    runs = [claimed_run(database_url, journal, max_output_bytes=1_000_000) for _ in range(6)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET node = 'another-node' WHERE id = %s", (runs[2].id,))
    answers: dict[int, RunStatus | None] = {}
    blocker = psycopg.connect(database_url)  # holds the writer's first batch back
    blocker.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (runs[0].id,))

    def end(run: Run) -> None:
        answers[run.id] = _end(journal, run, HeldOutput(0, [DATA[: run.id % 50 + 1]], NO_CAP))

    threads = [threading.Thread(target=end, args=(run,)) for run in runs]
    before = scrape_in_process()
    threads[0].start()  # its batch waits on the row lock (up to lock_timeout, 2 s)
    wait_until(lambda: waiting_on_a_lock(database_url), 2, "the first batch to wait")
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: journal.queued_writes() == 5, 2, "the other ends to queue")
    blocker.rollback()
    blocker.close()
    for thread in threads:
        thread.join(10)
    after = scrape_in_process()
    assert moved(before, after, "runvisor_journal_batch_size_count") == 2  # 1, then 5
    for run in runs:
        if run is runs[2]:
            assert answers[run.id] is None and stored(database_url, run.id) == (0, b"")
        else:
            size = run.id % 50 + 1
            assert answers[run.id] is RunStatus.SUCCEEDED
            assert stored(database_url, run.id) == (size, DATA[:size])


def test_a_claim_returns_the_run_with_every_attempt_the_new_one_included(
    database_url: str, journal: RunJournal
) -> None:
    """The claim is one statement: the new attempt's row (with its own marker) comes back with
    the earlier ones, though the statement inserting it cannot read it from the table."""
    run = claimed_run(database_url, journal, max_output_bytes=1_000_000)
    assert [a.attempt for a in run.attempts] == [1]
    restarting = journal.end_attempt(
        run,
        exit_code=1,
        signal=None,
        reason="exited",
        leftovers_killed=0,
        run_status=RunStatus.RESTARTING,
        run_reason=None,
        restart_delay_s=0.0,
        output=HeldOutput(0, [DATA[:10]], NO_CAP),
    )
    assert restarting is RunStatus.RESTARTING
    again = journal.claim_run(run.id, marker="m2", boot_id="b2")
    assert again is not None and again.attempt == 2 and again.status is RunStatus.RUNNING
    assert [(a.attempt, a.node) for a in again.attempts] == [(1, NODE), (2, NODE)]
    first, second = again.attempts
    assert first.process_marker == run.attempts[0].process_marker and first.finished_at
    assert second.process_marker == "m2" and second.boot_id == "b2" and not second.finished_at
    assert second.output_offset == 10  # where this attempt's output begins
    assert journal.claim_run(run.id, marker="m3", boot_id="b3") is None  # running: not again
