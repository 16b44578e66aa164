"""Recovery at start-up, in process: the plan for each run found active, and the spool
directories of runs the node no longer owns, against a real PostgreSQL and real processes."""

# Fixtures are imported from fix_processes and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from runvisor.models import RunStatus
from runvisor.procs.spool import SpoolLayout
from runvisor.store.journal import RunJournal
from runvisor.supervisor.recovery import (
    Adopt,
    NeverRecorded,
    RestartLater,
    clear_leftover_spools,
    plan_recovery,
)
from tests.fix_journal import claimed_run
from tests.procs.fix_processes import MARKER_ENV, Procs, leak_guard, live_tree, marker, procs  # noqa: F401

NODE = "recovery-test-node"


def test_a_claimed_attempt_whose_process_was_never_recorded_is_lost_by_its_marker(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal)
    assert plan_recovery(run, time.time()) == NeverRecorded(run.attempts[0].process_marker)
    assert plan_recovery(dataclasses.replace(run, attempts=[]), time.time()) == NeverRecorded(None)


def test_a_recorded_attempt_is_adopted(database_url: str, journal: RunJournal) -> None:
    run = claimed_run(database_url, journal)
    journal.start_attempt(run, pid=4321, start_ticks=99)
    recorded = journal.get_run(run.id)
    assert recorded is not None
    plan = plan_recovery(recorded, time.time())
    assert isinstance(plan, Adopt)
    assert (plan.attempt.attempt, plan.attempt.pid, plan.attempt.pid_start_ticks) == (1, 4321, 99)


def test_a_restarting_run_keeps_its_next_attempt_time(
    database_url: str, journal: RunJournal
) -> None:
    run = claimed_run(database_url, journal)
    now = datetime.now(UTC)
    due_later = dataclasses.replace(
        run, status=RunStatus.RESTARTING, next_attempt_at=now + timedelta(seconds=30)
    )
    overdue = dataclasses.replace(due_later, next_attempt_at=now - timedelta(seconds=30))
    unknown = dataclasses.replace(due_later, next_attempt_at=None)
    assert plan_recovery(due_later, now.timestamp()) == RestartLater(pytest.approx(30.0))
    assert plan_recovery(overdue, now.timestamp()) == RestartLater(0.0)
    assert plan_recovery(unknown, now.timestamp()) == RestartLater(0.0)


def test_leftover_spools_of_runs_no_longer_owned_are_killed_and_removed(
    database_url: str, journal: RunJournal, procs: Procs, data_dir: Path
) -> None:
    kept, stale = claimed_run(database_url, journal), claimed_run(database_url, journal)
    stale_marker = stale.attempts[0].process_marker
    spool_dir, work_dir = data_dir / "spool", data_dir / "work"
    for run in (kept, stale):
        (spool_dir / str(run.id)).mkdir(parents=True)
        (work_dir / str(run.id)).mkdir(parents=True)
    (spool_dir / "not-a-run").mkdir()
    orphan = procs.start(
        "sleep 300 & wait", env={"PATH": "/usr/bin:/bin", MARKER_ENV: stale_marker}
    )
    procs.wait_tree(orphan, lambda tree: len(tree) >= 2)

    clear_leftover_spools(journal, SpoolLayout(spool_dir, work_dir), keep={kept.id})

    assert live_tree(stale_marker) == {}
    procs.wait_exit(orphan)
    assert sorted(p.name for p in spool_dir.iterdir()) == sorted([str(kept.id), "not-a-run"])
    assert [p.name for p in work_dir.iterdir()] == [str(kept.id)]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT run_id, detail->>'processes' FROM audit WHERE action = 'run.orphans_killed'"
        ).fetchall()
    assert len(rows) == 1 and rows[0][0] == stale.id and int(rows[0][1]) >= 2
