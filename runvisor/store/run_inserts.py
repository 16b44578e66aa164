"""New runs, inserted in PostgreSQL before the start is answered: those asked at once in one
statement (store/batching.py).

A start is answered (202) once its run is committed, queued; 200 starts at once, one statement
each, were answered over 0.8 s (B4b), the spawns waiting behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import kwargs_row
from psycopg.types.json import Jsonb

from runvisor.models import Run
from runvisor.store.batching import StatementBatch
from runvisor.store.columns import RUN_COLUMNS
from runvisor.store.connection import AsyncConnect

# Each new run as a row of arrays (its place kept in `n`), inserted with its audit row only
# while its command is there (commands locked FOR SHARE for the statement; a command changes
# only by being deleted). Ids are taken first, so each row comes back to its own asker.
INSERT_RUNS = (
    sql.SQL(
        "WITH asks AS (SELECT * FROM unnest(%(command_id)s::bigint[], %(code)s::text[],"
        " %(env)s::jsonb[], %(timeout_s)s::float8[], %(stuck_after_s)s::float8[],"
        " %(restart)s::jsonb[], %(max_output_bytes)s::bigint[], %(limits)s::jsonb[],"
        " %(place_node)s::text[], %(place_labels)s::jsonb[], %(created_by)s::text[],"
        " %(on_output_limit)s::text[]) WITH ORDINALITY AS a(command_id, code, env, timeout_s,"
        " stuck_after_s, restart, max_output_bytes, limits, place_node, place_labels,"
        " created_by, on_output_limit, n)),"
        " present AS (SELECT id FROM commands WHERE id IN (SELECT command_id FROM asks)"
        " AND deleted_at IS NULL FOR SHARE),"
        " numbered AS (SELECT nextval(pg_get_serial_sequence('runs', 'id')) AS run_id, asks.*"
        " FROM asks WHERE command_id IN (SELECT id FROM present)),"
        " r AS (INSERT INTO runs (id, command_id, code, env, timeout_s, stuck_after_s, restart,"
        " max_output_bytes, limits, place_node, place_labels, created_by, on_output_limit)"
        " SELECT run_id, command_id, code, env, timeout_s, stuck_after_s, restart,"
        " max_output_bytes, limits, place_node, place_labels, created_by, on_output_limit"
        " FROM numbered ORDER BY n RETURNING {}),"
        " a AS (INSERT INTO audit (actor, action, command_id, run_id, detail)"
        " SELECT numbered.created_by, 'run.create', r.command_id, r.id, '{{}}'::jsonb"
        " FROM r JOIN numbered ON numbered.run_id = r.id ORDER BY r.id)"
        " SELECT numbered.n, r.* FROM r JOIN numbered ON numbered.run_id = r.id"
    )
    .format(RUN_COLUMNS)
    .as_string(None)
)


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run as it is inserted: its command's settings with the request's overrides applied."""

    command_id: int
    code: str
    env: dict[str, str]
    timeout_s: float | None
    stuck_after_s: float | None
    restart: dict[str, Any]
    max_output_bytes: int
    limits: dict[str, Any]
    place_node: str | None
    place_labels: dict[str, str]
    created_by: str
    on_output_limit: str


class RunInserts:
    """The HTTP side's new runs (async, on the history pool)."""

    def __init__(self, connect: AsyncConnect) -> None:
        self._conn = connect
        self._batch: StatementBatch[NewRun, Run | None] = StatementBatch(
            self._write, name="run-inserts"
        )

    async def insert(self, new: NewRun) -> Run | None:
        """The run, queued, and its `run.create` audit row; None if its command is gone (or
        going: deleted in a transaction not committed yet). StoreUnavailable: nothing written."""
        return await self._batch.submit(new)

    async def _write(self, asks: Sequence[NewRun]) -> list[Run | None]:
        params: dict[str, list[Any]] = {
            "command_id": [a.command_id for a in asks],
            "code": [a.code for a in asks],
            "env": [Jsonb(a.env) for a in asks],
            "timeout_s": [a.timeout_s for a in asks],
            "stuck_after_s": [a.stuck_after_s for a in asks],
            "restart": [Jsonb(a.restart) for a in asks],
            "max_output_bytes": [a.max_output_bytes for a in asks],
            "limits": [Jsonb(a.limits) for a in asks],
            "place_node": [a.place_node for a in asks],
            "place_labels": [Jsonb(a.place_labels) for a in asks],
            "created_by": [a.created_by for a in asks],
            "on_output_limit": [a.on_output_limit for a in asks],
        }
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=kwargs_row(_numbered_run))
            await cur.execute(INSERT_RUNS, params)
            inserted = dict(await cur.fetchall())
        return [inserted.get(n) for n in range(1, len(asks) + 1)]


def _numbered_run(*, n: int, **columns: Any) -> tuple[int, Run]:
    return n, Run(**columns)
