"""The one way an attempt ends (actors/attempt_end.py), for a RunActor and the Supervisor alike,
against a real PostgreSQL and Redis: the policy's decision is recorded, the caller hears of it
before anything is removed, the state is published, and the files go (the run's on a terminal
end, the attempt's on a restart); a run this node lost is left alone."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import psycopg
import redis

from runvisor.actors.attempt_end import Outcome, Recorded, end_attempt
from runvisor.logs import get_logger
from runvisor.models import AttemptEndReason, Run, RunStatus
from runvisor.procs.spawn import ExitStatus
from runvisor.procs.spool import SpoolLayout
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.redis_keys import RedisKeys
from tests.fix_metrics import moved, scrape_in_process

NODE = "attempt-end-test-node"


def claimed_run(database_url: str, journal: RunJournal, restart: dict[str, object]) -> Run:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000000) RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO runs (command_id, code, max_output_bytes, restart)"
            " VALUES (%s, 'true', 1000000, %s)",
            (row[0], json.dumps(restart)),
        )
    run = journal.claim_next_queued(marker=uuid.uuid4().hex, boot_id="test")
    assert run is not None and run.attempt == 1
    return run


def spooled(spool: SpoolLayout, run: Run) -> None:
    """The files a RunActor leaves for attempt 1, and an older attempt's output."""
    spool.run_spool(run.id).mkdir(parents=True)
    spool.run_work(run.id).mkdir(parents=True)
    spool.output(run.id, 1).write_bytes(b"out")
    spool.status(run.id, 1).write_text("1")
    spool.output(run.id, 0).write_bytes(b"older")


def end(
    journal: RunJournal, live: LiveState, spool: SpoolLayout, run: Run, exit_code: int
) -> tuple[Recorded | None, list[tuple[Recorded, bool]]]:
    """End attempt 1 with `exit_code`; also what the caller heard, and whether the attempt's
    output file was still there when it did."""
    heard: list[tuple[Recorded, bool]] = []
    recorded = end_attempt(
        journal,
        live,
        spool,
        run,
        Outcome(
            exit=ExitStatus(exit_code=exit_code, signal=None),
            reason=AttemptEndReason.EXITED,
            started_at=time.time() - 1,
            leftovers_killed=2,
            end_mechanism="scan",
        ),
        procs=None,
        live_state=lambda status: {"status": str(status), "attempt": run.attempt},
        log=get_logger("runvisor.test"),
        on_recorded=lambda r: heard.append((r, spool.output(run.id, 1).exists())),
    )
    return recorded, heard


def stored(database_url: str, run_id: int) -> tuple[str, int | None, int]:
    """(runs.status, runs.exit_code, the attempt's leftovers_killed)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT r.status, r.exit_code, a.leftovers_killed FROM runs r"
            " JOIN run_attempts a ON a.run_id = r.id AND a.attempt = r.attempt WHERE r.id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return row


def test_a_terminal_end_is_recorded_heard_before_the_files_go_published_and_cleaned_up(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    redis_server_url: str,
    redis_prefix: str,
    data_dir: Path,
) -> None:
    spool = SpoolLayout(data_dir / "spool", data_dir / "work")
    run = claimed_run(database_url, journal, {"policy": "never"})
    spooled(spool, run)

    recorded, heard = end(journal, live, spool, run, exit_code=0)

    assert recorded == Recorded(RunStatus.SUCCEEDED, None, None)
    assert heard == [(recorded, True)]
    assert stored(database_url, run.id) == ("succeeded", 0, 2)
    raw = redis.Redis.from_url(redis_server_url)
    try:
        state = raw.hgetall(RedisKeys(redis_prefix).run_state(run.id))
    finally:
        raw.close()
    assert state[b"status"] == b"succeeded" and state[b"attempt"] == b"1"
    assert not spool.run_spool(run.id).exists() and not spool.run_work(run.id).exists()


def test_a_restart_removes_only_the_attempts_spool_files(
    database_url: str, journal: RunJournal, live: LiveState, data_dir: Path
) -> None:
    spool = SpoolLayout(data_dir / "spool", data_dir / "work")
    run = claimed_run(database_url, journal, {"policy": "on-failure", "backoff_s": 5})
    spooled(spool, run)

    recorded, heard = end(journal, live, spool, run, exit_code=3)

    assert recorded is not None and recorded.status is RunStatus.RESTARTING
    assert recorded.restart_delay_s is not None and 4 <= recorded.restart_delay_s <= 6
    assert heard == [(recorded, True)]
    assert stored(database_url, run.id) == ("restarting", 3, 2)
    assert sorted(p.name for p in spool.run_spool(run.id).iterdir()) == ["0.out"]
    assert spool.run_work(run.id).is_dir()


def test_a_run_this_node_lost_is_left_alone(
    database_url: str, journal: RunJournal, live: LiveState, data_dir: Path
) -> None:
    spool = SpoolLayout(data_dir / "spool", data_dir / "work")
    run = claimed_run(database_url, journal, {"policy": "never"})
    spooled(spool, run)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET node = 'another-node' WHERE id = %s", (run.id,))

    recorded, heard = end(journal, live, spool, run, exit_code=0)

    assert recorded is None and heard == []
    assert stored(database_url, run.id) == ("running", None, 0)
    assert spool.output(run.id, 1).exists() and spool.status(run.id, 1).exists()


def test_each_recorded_end_is_counted_once_with_what_became_of_the_run(
    database_url: str, journal: RunJournal, live: LiveState, data_dir: Path
) -> None:
    spool = SpoolLayout(data_dir / "spool", data_dir / "work")
    restarted = claimed_run(database_url, journal, {"policy": "on-failure", "backoff_s": 5})
    succeeded = claimed_run(database_url, journal, {"policy": "never"})
    lost = claimed_run(database_url, journal, {"policy": "never"})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET node = 'another-node' WHERE id = %s", (lost.id,))
    before = scrape_in_process()

    end(journal, live, spool, restarted, exit_code=3)
    end(journal, live, spool, succeeded, exit_code=0)
    end(journal, live, spool, lost, exit_code=0)  # not this node's any more: not counted

    after = scrape_in_process()
    assert moved(before, after, "runvisor_attempts_ended_total", mechanism="scan") == 2
    assert moved(before, after, "runvisor_restarts_total", reason="exited") == 1
    assert moved(before, after, "runvisor_runs_ended_total", status="succeeded") == 1
