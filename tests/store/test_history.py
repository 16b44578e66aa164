"""The history (HTTP side) against a real PostgreSQL: a run and its attempts are read as of one
moment, so the run's fields agree with its attempts even while a pid is being recorded."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from runvisor.errors import NotFound
from runvisor.models import Run, RunSpec
from runvisor.store.history import History, open_history
from runvisor.store.journal import open_journal
from tests.fix_journal import waiting_on_a_lock
from tests.polling import wait_until
from tests.store.fix_history import CountingCursor, counting_history

NODE = "history-test-node"
PID = 4242

READS: dict[str, Callable[[History, Run], Awaitable[Run | None]]] = {
    "get_run": lambda history, run: history.get_run(run.id),
    "latest_run": lambda history, run: history.latest_run(run.command_id),
    "list_runs": lambda history, run: _first_listed(history),
}


async def _first_listed(history: History) -> Run | None:
    items, _total = await history.list_runs(command_id=None, statuses=None, limit=10, offset=0)
    return items[0] if items else None


def claimed_run(database_url: str) -> Run:
    """A run claimed by NODE: running, attempt 1 open, no pid recorded yet."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000) RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes) VALUES (%s, 'true', 1000)",
            (row[0],),
        )
    journal = open_journal(database_url, node_id=NODE)
    try:
        run = journal.claim_next_queued(marker=uuid.uuid4().hex, boot_id="test")
    finally:
        journal.close()
    assert run is not None and run.pid is None and run.attempts[0].pid is None
    return run


@pytest.mark.parametrize("read", sorted(READS))
def test_a_run_read_while_its_pid_is_recorded_agrees_with_its_attempts(
    database_url: str, read: str
) -> None:
    run = claimed_run(database_url)
    results: list[Run | None] = []

    async def read_run() -> None:
        async with open_history(database_url, default_max_output_bytes=1000) as history:
            results.append(await READS[read](history, run))

    with psycopg.connect(database_url) as writer:
        # The pid recorded as RunJournal.start_attempt records it (both rows, one transaction),
        # with run_attempts locked until the commit: the reader reads the run's row, then waits
        # for the commit before it reads the attempts.
        writer.execute("UPDATE run_attempts SET pid = %s WHERE run_id = %s", (PID, run.id))
        writer.execute("UPDATE runs SET pid = %s WHERE id = %s", (PID, run.id))
        writer.execute("LOCK TABLE run_attempts IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=lambda: asyncio.run(read_run()))
        reader.start()
        wait_until(lambda: waiting_on_a_lock(database_url), 10, "the reader to wait on the lock")
        writer.commit()
    reader.join(timeout=10)
    assert not reader.is_alive()
    [seen] = results
    assert seen is not None and seen.id == run.id
    # As of one moment: before the commit (both null) or after it (both set; a single
    # statement takes its snapshot once its locks are granted), never the run's row from
    # before it with the attempt from after it.
    assert (seen.pid, [a.pid for a in seen.attempts]) in ((None, [None]), (PID, [PID]))

    async def read_again() -> Run | None:
        async with open_history(database_url, default_max_output_bytes=1000) as history:
            return await READS[read](history, run)

    later = asyncio.run(read_again())
    assert later is not None
    assert (later.pid, [a.pid for a in later.attempts]) == (PID, [PID])


async def test_a_command_deleted_while_its_run_is_created_leaves_no_run(database_url: str) -> None:
    """create_run reads the command, then inserts the run only while the command is there:
    a delete that commits in between (here: holding the row when the insert comes) wins, and
    neither a run nor its audit row is left."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000) RETURNING id"
        ).fetchone()
    assert row is not None
    command_id = row[0]
    deleter = psycopg.connect(database_url)  # the delete, not committed yet
    deleter.execute("UPDATE commands SET deleted_at = now() WHERE id = %s", (command_id,))
    async with open_history(database_url, default_max_output_bytes=1000) as history:
        creating = asyncio.create_task(history.create_run(command_id, RunSpec(), actor="test"))
        await asyncio.to_thread(
            wait_until, lambda: waiting_on_a_lock(database_url), 5, "the insert to wait"
        )
        deleter.commit()
        deleter.close()
        with pytest.raises(NotFound):
            await creating
        # and without the race, a run and its audit row, in one statement
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE commands SET deleted_at = NULL WHERE id = %s", (command_id,))
        run = await history.create_run(command_id, RunSpec(), actor="test")
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT id FROM runs WHERE command_id = %s", (command_id,)).fetchall()
        audit = conn.execute(
            "SELECT actor, command_id, run_id FROM audit WHERE action = 'run.create'"
        ).fetchall()
    assert runs == [(run.id,)]
    assert audit == [("test", command_id, run.id)]


async def test_a_command_started_before_is_started_in_one_statement(database_url: str) -> None:
    """A command never changes, only goes: create_run keeps what it read and sends only the
    insert (which checks the command is there) at the next start; a command deleted on
    another node fails that start and is read again after."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('echo one', 1000) RETURNING id"
        ).fetchone()
    assert row is not None
    command_id = row[0]
    pool, history = await counting_history(database_url)
    async with pool:

        async def statements_of_a_start() -> int:
            before = CountingCursor.statements
            await history.create_run(command_id, RunSpec(), actor="test")
            return CountingCursor.statements - before

        assert await statements_of_a_start() == 2  # read, then insert
        assert await statements_of_a_start() == 1
        assert await statements_of_a_start() == 1
        with psycopg.connect(database_url, autocommit=True) as conn:  # another node's delete
            conn.execute("UPDATE commands SET deleted_at = now() WHERE id = %s", (command_id,))
        with pytest.raises(NotFound):
            await history.create_run(command_id, RunSpec(), actor="test")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE commands SET deleted_at = NULL WHERE id = %s", (command_id,))
        assert await statements_of_a_start() == 2  # forgotten: read again
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM runs WHERE command_id = %s", (command_id,))
        assert count.fetchone() == (4,)
