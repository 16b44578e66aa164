"""Column lists matching the records in runvisor.models, shared by both history stores."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

from psycopg import sql

from runvisor.models import Attempt, AuditEntry, Command, Run


def _columns(record: type, *, skip: tuple[str, ...] = ()) -> sql.Composed:
    names = [f.name for f in dataclasses.fields(record) if f.name not in skip]
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


COMMAND_COLUMNS = _columns(Command)
RUN_COLUMNS = _columns(Run, skip=("attempts",))
ATTEMPT_COLUMNS = _columns(Attempt)
AUDIT_COLUMNS = _columns(AuditEntry)

AUDIT_INSERT = (
    "INSERT INTO audit (actor, action, command_id, run_id, detail) VALUES (%s, %s, %s, %s, %s)"
)
RUNS_SELECT = sql.SQL("SELECT {} FROM runs ").format(RUN_COLUMNS)
# Runs with their attempts in one statement (one snapshot, one round trip): the attempts come
# as a JSON array in the `attempts` column, turned into Attempt records by attempts_from_json.
RUN_WITH_ATTEMPTS = sql.SQL(
    "{}, (SELECT coalesce(json_agg(a ORDER BY a.attempt), '[]'::json)"
    " FROM (SELECT {} FROM run_attempts WHERE run_id = runs.id) AS a) AS attempts"
).format(RUN_COLUMNS, ATTEMPT_COLUMNS)
RUNS_WITH_ATTEMPTS_SELECT = sql.SQL("SELECT {} FROM runs ").format(RUN_WITH_ATTEMPTS)
GET_RUN = (RUNS_WITH_ATTEMPTS_SELECT + sql.SQL("WHERE id = %s")).as_string(None)


def attempts_from_json(runs: list[Run]) -> list[Run]:
    """Turn the JSON `attempts` of runs read with RUNS_WITH_ATTEMPTS_SELECT into records."""
    for run in runs:
        run.attempts = [_attempt_of(row) for row in cast(list[dict[str, Any]], run.attempts)]
    return runs


def _attempt_of(row: dict[str, Any]) -> Attempt:
    finished = row["finished_at"]
    row["started_at"] = datetime.fromisoformat(row["started_at"])
    row["finished_at"] = None if finished is None else datetime.fromisoformat(finished)
    return Attempt(**row)
