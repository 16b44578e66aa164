"""Column lists matching the records in runvisor.models, shared by both history stores."""

from __future__ import annotations

import dataclasses

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
ATTEMPTS_OF_RUNS = sql.SQL(
    "SELECT {} FROM run_attempts WHERE run_id = ANY(%s) ORDER BY run_id, attempt"
).format(ATTEMPT_COLUMNS)


def attach_attempts(runs: list[Run], attempts: list[Attempt]) -> list[Run]:
    """Give each run its attempts (fetched with ATTEMPTS_OF_RUNS), in attempt order."""
    by_run: dict[int, list[Attempt]] = {}
    for attempt in attempts:
        by_run.setdefault(attempt.run_id, []).append(attempt)
    for run in runs:
        run.attempts = by_run.get(run.id, [])
    return runs
