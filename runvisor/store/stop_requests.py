"""Stop requests, recorded in PostgreSQL before they are answered: those asked at once in one
statement (store/batching.py).

A stop is answered (202) only once it is recorded, and its run is told only then (see
RunControl.stop_run); 100 stops at once, one statement each, told the last run ~370 ms after the
first (B5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from runvisor.models import Run, RunStatus
from runvisor.store.batching import StatementBatch
from runvisor.store.columns import RUN_WITH_ATTEMPTS, attempts_from_json
from runvisor.store.connection import AsyncConnect

_STARTED = [str(RunStatus.RUNNING), str(RunStatus.RESTARTING)]

# Each request as a row (its place kept in `n`); a run asked twice in one batch: the first
# asker is kept and the last grace counts, as when the two statements ran one after the other.
# Every request that found its run started gets its audit row, in the order they came.
RECORD_STOPS = (
    sql.SQL(
        "WITH asks AS (SELECT * FROM unnest(%(ids)s::bigint[], %(by)s::text[],"
        " %(grace)s::float8[], %(detail)s::jsonb[]) WITH ORDINALITY AS a(ask_id, ask_by,"
        " ask_grace, ask_detail, n)),"
        " per_run AS (SELECT ask_id, (array_agg(ask_by ORDER BY n))[1] AS first_by,"
        " (array_agg(ask_grace ORDER BY n DESC))[1] AS last_grace FROM asks GROUP BY ask_id),"
        " asked AS (UPDATE runs SET stop_requested_by = coalesce(stop_requested_by, first_by),"
        " stop_requested_at = coalesce(stop_requested_at, now()), stop_grace_s = last_grace"
        " FROM per_run WHERE runs.id = per_run.ask_id AND runs.status = ANY(%(started)s)"
        " RETURNING {}),"
        " audited AS (INSERT INTO audit (actor, action, run_id, detail)"
        " SELECT ask_by, 'run.stop', ask_id, ask_detail FROM asks"
        " WHERE ask_id IN (SELECT id FROM asked) ORDER BY n)"
        " SELECT * FROM asked"
    )
    .format(RUN_WITH_ATTEMPTS)
    .as_string(None)
)


@dataclass(frozen=True, slots=True)
class StopAsk:
    run_id: int
    actor: str
    grace_s: float


class StopRequests:
    """The HTTP side's stop requests (async, on the history pool)."""

    def __init__(self, connect: AsyncConnect) -> None:
        self._conn = connect
        self._batch: StatementBatch[StopAsk, Run | None] = StatementBatch(
            self._write, name="stop-requests"
        )

    async def record(self, run_id: int, *, actor: str, grace_s: float) -> Run | None:
        """Note who asked to stop a started run (the first asker is kept), audited; the run
        read back. None if it is not running or restarting (a queued run is stopped at once:
        History.stop_queued_run). StoreUnavailable if PostgreSQL is: nothing recorded."""
        return await self._batch.submit(StopAsk(run_id, actor, grace_s))

    async def _write(self, asks: Sequence[StopAsk]) -> list[Run | None]:
        params = {
            "ids": [ask.run_id for ask in asks],
            "by": [ask.actor for ask in asks],
            "grace": [ask.grace_s for ask in asks],
            "detail": [Jsonb({"grace_s": ask.grace_s}) for ask in asks],
            "started": _STARTED,
        }
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(Run))
            await cur.execute(RECORD_STOPS, params)
            runs = {run.id: run for run in attempts_from_json(await cur.fetchall())}
        return [runs.get(ask.run_id) for ask in asks]
