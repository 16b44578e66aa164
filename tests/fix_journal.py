"""A run as the actors' journal sees it once claimed, for tests of the store, the recovery and
the watchdog (real PostgreSQL, the test's own database); the `journal` fixture of a test module's
node (its NODE)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from runvisor.models import Run, RunStatus
from runvisor.store.journal import RunJournal, open_journal


@pytest.fixture
def journal(database_url: str, request: pytest.FixtureRequest) -> Iterator[RunJournal]:
    """The journal of the test module's node (its module-level NODE), closed after the test."""
    journal = open_journal(database_url, node_id=request.module.NODE)
    yield journal
    journal.close()


def claimed_run(database_url: str, journal: RunJournal, *, max_output_bytes: int = 1000) -> Run:
    """A queued run of `true`, claimed by the journal's node: running, attempt 1 open, its
    process not recorded yet."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', %s) RETURNING id",
            (max_output_bytes,),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes) VALUES (%s, 'true', %s)",
            (row[0], max_output_bytes),
        )
    run = journal.claim_next_queued(marker=uuid.uuid4().hex, boot_id="test")
    assert run is not None and run.attempt == 1 and run.status is RunStatus.RUNNING
    return run


def waiting_on_a_lock(database_url: str) -> bool:
    """Whether a session of the database waits for a lock now (a write held by a test's row
    lock, say)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


def stored_output(database_url: str, run_id: int) -> bytes:
    """The run's output as PostgreSQL holds it, read past the journal (and any proxy)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT data FROM run_output WHERE run_id = %s ORDER BY byte_offset", (run_id,)
        ).fetchall()
    return b"".join(bytes(row[0]) for row in rows)
