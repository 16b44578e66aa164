"""New runs inserted many at once (store/run_inserts.py, store/batching.py), against a real
PostgreSQL: each asker gets its own run, and only its own error."""

from __future__ import annotations

import asyncio
import dataclasses

import psycopg

from runvisor.errors import NotFound
from runvisor.models import Run, RunSpec, RunStatus
from runvisor.store.run_inserts import NewRun
from tests.store.fix_history import CountingCursor, counting_history


def new_command(database_url: str, code: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes, env)"
            " VALUES (%s, 1000, '{\"WHO\": null}') RETURNING id",
            (code,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_starts_asked_at_once_are_inserted_in_one_statement_each_run_its_askers(
    database_url: str,
) -> None:
    one, two, going = (new_command(database_url, f"echo {n}") for n in (1, 2, 3))
    pool, history = await counting_history(database_url)
    async with pool:
        for command_id in (one, two, going):  # read once, kept (store/command_cache.py)
            await history.create_run(command_id, RunSpec(), actor="warm-up")
        with psycopg.connect(database_url, autocommit=True) as conn:  # deleted on another node
            conn.execute("UPDATE commands SET deleted_at = now() WHERE id = %s", (going,))
        asks = [(one, "ann"), (two, "bob"), (going, "cy"), (one, "dee")]
        before = CountingCursor.statements
        answers = await asyncio.gather(
            *(
                history.create_run(command_id, RunSpec(env={"WHO": who}), actor=who)
                for command_id, who in asks
            ),
            return_exceptions=True,
        )
        assert CountingCursor.statements - before == 1
    assert isinstance(answers[2], NotFound)
    runs = [answer for answer in answers if isinstance(answer, Run)]
    assert [(run.command_id, run.env) for run in runs] == [
        (one, {"WHO": "ann"}), (two, {"WHO": "bob"}), (one, {"WHO": "dee"})
    ]  # fmt: skip
    assert all(run.status is RunStatus.QUEUED for run in runs)
    assert [run.code for run in runs] == ["echo 1", "echo 2", "echo 1"]
    with psycopg.connect(database_url) as conn:
        audit = conn.execute(
            "SELECT actor, command_id, run_id FROM audit WHERE action = 'run.create'"
            " AND actor <> 'warm-up' ORDER BY run_id"
        ).fetchall()
        count = conn.execute("SELECT count(*) FROM runs WHERE command_id = %s", (going,))
        assert count.fetchone() == (1,)  # the warm-up's alone
    assert sorted(audit) == sorted((who, run.command_id, run.id) for run, who in zip(
        runs, ["ann", "bob", "dee"], strict=True
    ))  # fmt: skip


async def test_an_insert_postgresql_refuses_fails_its_asker_alone(database_url: str) -> None:
    command_id = new_command(database_url, "true")
    good = NewRun(
        command_id=command_id,
        code="true",
        env={},
        timeout_s=None,
        stuck_after_s=None,
        restart={"policy": "never"},
        max_output_bytes=1000,
        limits={},
        place_node=None,
        place_labels={},
        created_by="op",
        on_output_limit="truncate",
    )
    bad = dataclasses.replace(good, on_output_limit="explode")  # refused by a CHECK
    pool, history = await counting_history(database_url)
    async with pool:
        before = CountingCursor.statements
        answers = await asyncio.gather(
            history.run_inserts.insert(good),
            history.run_inserts.insert(bad),
            history.run_inserts.insert(good),
            return_exceptions=True,
        )
        # the batch, refused; then each alone: its error is the bad one's only
        assert CountingCursor.statements - before == 4
    assert isinstance(answers[0], Run) and isinstance(answers[2], Run)
    assert isinstance(answers[1], psycopg.errors.CheckViolation)
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM runs WHERE command_id = %s", (command_id,))
        assert count.fetchone() == (2,)


async def test_the_start_of_a_command_not_read_yet_reads_it_then_inserts(
    database_url: str,
) -> None:
    command_id = new_command(database_url, "echo hi")
    pool, history = await counting_history(database_url)
    async with pool:
        before = CountingCursor.statements
        run = await history.create_run(command_id, RunSpec(), actor="op")
        assert CountingCursor.statements - before == 2
    assert (run.command_id, run.code, run.status) == (command_id, "echo hi", RunStatus.QUEUED)
