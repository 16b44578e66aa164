"""History as the actors write it: claims, attempts, output chunks and outcomes (sync pool).

Every write that belongs to an attempt is fenced by (node, attempt): a node that comes back
after its runs were taken over cannot overwrite the newer attempt's record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from runvisor import metrics
from runvisor.errors import StoreUnavailable
from runvisor.models import Attempt, Run, RunStatus
from runvisor.store.columns import (
    ATTEMPTS_OF_RUNS,
    AUDIT_INSERT,
    RUN_COLUMNS,
    RUNS_SELECT,
    attach_attempts,
)
from runvisor.store.connection import CONNECTION_OPTIONS
from runvisor.store.waits import StoreWaits


def open_journal(
    conninfo: str, *, node_id: str, max_size: int = 8, store_waits: StoreWaits | None = None
) -> RunJournal:
    pool = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs=CONNECTION_OPTIONS,
        # Short: a RunActor waits this long per write while PostgreSQL is down, and between
        # tries it handles stops, exits and timeouts.
        timeout=2.0,
        check=ConnectionPool.check_connection,  # see history.open_history
    )
    pool.open(wait=False)
    return RunJournal(pool, node_id=node_id, store_waits=store_waits)


class RunJournal:
    def __init__(
        self, pool: ConnectionPool, *, node_id: str, store_waits: StoreWaits | None = None
    ) -> None:
        self._pool = pool
        self.node_id = node_id
        self.actor = f"node:{node_id}"
        # Every call is marked there: the Supervisor does not take a RunActor waiting on
        # PostgreSQL for a wedged one.
        self._waits = store_waits or StoreWaits()

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        # A statement cancelled by statement_timeout (QueryCanceled) or lock_timeout
        # (LockNotAvailable) is an OperationalError too: too slow is unavailable, and the
        # caller retries; it never fails a run.
        with self._waits.call():
            try:
                with self._pool.connection() as conn:
                    yield conn
            except (PoolTimeout, psycopg.OperationalError) as exc:
                metrics.store_reachable("postgres", False)
                raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
            metrics.store_reachable("postgres", True)

    def ping(self) -> None:
        with self._conn() as conn:
            conn.execute("SELECT 1")

    def get_run(self, run_id: int) -> Run | None:
        with self._conn() as conn:
            runs = _fetch_runs(conn, sql.SQL("WHERE id = %s"), (run_id,))
        return runs[0] if runs else None

    def claim_run(self, run_id: int, *, marker: str, boot_id: str) -> Run | None:
        """Take a queued (or restarting) run for this node and open its next attempt."""
        return self._claim(sql.SQL("id = %s"), (run_id,), marker=marker, boot_id=boot_id)

    def claim_next_queued(self, *, marker: str, boot_id: str) -> Run | None:
        """Take the oldest queued run no other node is claiming right now."""
        return self._claim(sql.SQL("status = 'queued'"), (), marker=marker, boot_id=boot_id)

    def _claim(
        self, condition: sql.Composable, params: tuple[Any, ...], *, marker: str, boot_id: str
    ) -> Run | None:
        """One transaction: the run is ours, with a new attempt number, and the attempt's row
        holds its process marker before any process exists, so a crash right after the spawn
        still leaves a way to find (and kill) what was started. A run whose stop was requested
        is never claimed."""
        query = sql.SQL(
            "UPDATE runs SET status = 'running', node = %s, attempt = attempt + 1, pid = NULL,"
            " exit_code = NULL, signal = NULL, reason = NULL, next_attempt_at = NULL,"
            " started_at = coalesce(started_at, now())"
            " WHERE id = (SELECT id FROM runs WHERE {} AND status IN ('queued', 'restarting')"
            "             AND stop_requested_at IS NULL"
            "             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING {}"
        ).format(condition, RUN_COLUMNS)
        with self._conn() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Run))
            cur.execute(query, (self.node_id, *params))
            run = cur.fetchone()
            if run is None:
                return None
            conn.execute(
                "INSERT INTO run_attempts (run_id, attempt, node, process_marker, boot_id,"
                " output_offset) VALUES (%s, %s, %s, %s, %s, %s)",
                (run.id, run.attempt, self.node_id, marker, boot_id, run.output_bytes),
            )
            acur = conn.cursor(row_factory=class_row(Attempt))
            acur.execute(ATTEMPTS_OF_RUNS, ([run.id],))
            return attach_attempts([run], acur.fetchall())[0]

    def start_attempt(self, run: Run, *, pid: int, start_ticks: int) -> None:
        """The attempt's process exists: record its identity (pid + start time)."""
        started = time.perf_counter()
        with self._conn() as conn, conn.transaction():
            conn.execute(
                "UPDATE run_attempts SET pid = %s, pid_start_ticks = %s"
                " WHERE run_id = %s AND attempt = %s AND node = %s",
                (pid, start_ticks, run.id, run.attempt, self.node_id),
            )
            conn.execute(
                "UPDATE runs SET pid = %s WHERE id = %s AND attempt = %s AND node = %s",
                (pid, run.id, run.attempt, self.node_id),
            )
        metrics.observe_journal_batch(2, time.perf_counter() - started)

    def append_output(
        self, run_id: int, attempt: int, *, offset: int, chunks: Sequence[bytes], truncated: bool
    ) -> bool:
        """Store output chunks starting at byte `offset`; False if this node lost the run.

        Two writers may store the same spool range (a RunActor woken after the Supervisor took
        over its attempt's end): under the row lock, bytes below the stored end are skipped, so
        no byte is stored twice, and `output_bytes` never moves backwards.
        """
        total = offset + sum(len(c) for c in chunks)
        started = time.perf_counter()
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "SELECT output_bytes FROM runs"
                " WHERE id = %s AND attempt = %s AND node = %s AND status = 'running' FOR UPDATE",
                (run_id, attempt, self.node_id),
            ).fetchone()
            if row is None:
                return False
            stored_end: int = row[0]
            conn.execute(
                "UPDATE runs SET output_bytes = GREATEST(output_bytes, %s),"
                " output_truncated = output_truncated OR %s WHERE id = %s",
                (total, truncated, run_id),
            )
            rows, at = [], offset
            for chunk in chunks:
                skip = min(max(stored_end - at, 0), len(chunk))
                if skip < len(chunk):
                    rows.append((run_id, at + skip, chunk[skip:]))
                at += len(chunk)
            if rows:
                # A re-flush after a crash may repeat an offset already stored: keep the first.
                conn.cursor().executemany(
                    "INSERT INTO run_output (run_id, byte_offset, data) VALUES (%s, %s, %s)"
                    " ON CONFLICT (run_id, byte_offset) DO NOTHING",
                    rows,
                )
        metrics.observe_journal_batch(1 + len(rows), time.perf_counter() - started)
        metrics.output_stored(sum(len(row[2]) for row in rows))
        return True

    def end_attempt(
        self,
        run: Run,
        *,
        exit_code: int | None,
        signal: int | None,
        reason: str,
        leftovers_killed: int,
        run_status: RunStatus,
        run_reason: str | None,
        restart_delay_s: float | None = None,
    ) -> RunStatus | None:
        """Close the attempt and set the run's status; None if this node lost the run.

        PostgreSQL has the last word on a stop: if one was requested (whatever the RunActor
        knew), the run ends `stopped` and is not restarted. Returns the status stored.
        """
        restarting = restart_delay_s is not None and not run_status.is_terminal
        started = time.perf_counter()
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE runs SET"
                " status = CASE WHEN stop_requested_at IS NULL THEN %(status)s ELSE 'stopped' END,"
                " exit_code = %(exit_code)s, signal = %(signal)s,"
                " reason = CASE WHEN stop_requested_at IS NULL OR %(status)s = 'stopped'"
                "   THEN %(reason)s ELSE 'stopped by ' || stop_requested_by END,"
                " finished_at = CASE WHEN stop_requested_at IS NOT NULL OR %(terminal)s"
                "   THEN now() END,"
                " next_attempt_at = CASE WHEN stop_requested_at IS NULL AND %(restarting)s"
                "   THEN now() + make_interval(secs => %(delay)s) END,"
                " restart_count = restart_count"
                "   + CASE WHEN stop_requested_at IS NULL AND %(restarting)s THEN 1 ELSE 0 END"
                " WHERE id = %(run_id)s AND attempt = %(attempt)s AND node = %(node)s"
                "   AND status = 'running'"
                " RETURNING status",
                {
                    "status": str(run_status),
                    "exit_code": exit_code,
                    "signal": signal,
                    "reason": run_reason,
                    "terminal": run_status.is_terminal,
                    "restarting": restarting,
                    "delay": restart_delay_s or 0.0,
                    "run_id": run.id,
                    "attempt": run.attempt,
                    "node": self.node_id,
                },
            ).fetchone()
            if row is None:
                return None
            stored = RunStatus(row[0])
            conn.execute(
                "UPDATE run_attempts SET finished_at = coalesce(finished_at, now()),"
                " exit_code = %s, signal = %s, reason = %s, leftovers_killed = %s"
                " WHERE run_id = %s AND attempt = %s AND node = %s",
                (exit_code, signal, reason, leftovers_killed, run.id, run.attempt, self.node_id),
            )
            _audit(
                conn,
                self.actor,
                f"run.{stored}",
                run_id=run.id,
                detail={
                    "attempt": run.attempt,
                    "reason": reason,
                    "exit_code": exit_code,
                    "signal": signal,
                    "leftovers_killed": leftovers_killed,
                    "restart_delay_s": restart_delay_s if stored is RunStatus.RESTARTING else None,
                },
            )
        metrics.observe_journal_batch(3, time.perf_counter() - started)
        return stored

    def stop_requests(self) -> list[tuple[int, str, float | None, float]]:
        """Active runs of this node whose stop was requested: (run id, by whom, grace_s,
        seconds since the request). The Supervisor re-delivers them: a message can be lost."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, stop_requested_by, stop_grace_s,"
                " extract(epoch FROM now() - stop_requested_at)::float8"
                " FROM runs WHERE node = %s AND status IN ('running', 'restarting')"
                " AND stop_requested_at IS NOT NULL",
                (self.node_id,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def stop_restarting_run(self, run_id: int) -> bool:
        """End a run waiting for its next attempt whose stop was requested."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE runs SET status = 'stopped', finished_at = now(), next_attempt_at = NULL,"
                " reason = 'stopped by ' || stop_requested_by || ' while waiting to restart'"
                " WHERE id = %s AND status = 'restarting' AND node = %s"
                " AND stop_requested_at IS NOT NULL RETURNING reason",
                (run_id, self.node_id),
            ).fetchone()
            if row is None:
                return False
            _audit(conn, self.actor, "run.stopped", run_id=run_id, detail={"reason": row[0]})
        metrics.run_ended(RunStatus.STOPPED)
        return True

    def active_runs_of_node(self) -> list[Run]:
        """Runs this node owned when it last stopped (or crashed), with their attempts."""
        with self._conn() as conn:
            return _fetch_runs(
                conn,
                sql.SQL("WHERE node = %s AND status IN ('running', 'restarting') ORDER BY id"),
                (self.node_id,),
            )

    def attempt_markers(self, run_ids: Sequence[int]) -> dict[int, list[str]]:
        """The process markers of every attempt of these runs."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT run_id, process_marker FROM run_attempts WHERE run_id = ANY(%s)",
                (list(run_ids),),
            ).fetchall()
        markers: dict[int, list[str]] = {}
        for run_id, marker in rows:
            markers.setdefault(run_id, []).append(marker)
        return markers

    def nodes_with_active_runs(self) -> list[str]:
        """Other nodes that own running or restarting runs."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT node FROM runs WHERE status IN ('running', 'restarting')"
                " AND node IS NOT NULL AND node <> %s",
                (self.node_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def take_over_runs(self, dead_node: str) -> list[Run]:
        """Move the active runs of a node that lost its lease to this node, with their attempts.

        The attempt number stays: this node ends that attempt (lost) and the policy decides. The
        dead node, should it come back, is fenced off by the node column.
        """
        with self._conn() as conn, conn.transaction():
            ids = [
                row[0]
                for row in conn.execute(
                    "UPDATE runs SET node = %s WHERE node = %s"
                    " AND status IN ('running', 'restarting') RETURNING id",
                    (self.node_id, dead_node),
                ).fetchall()
            ]
            if not ids:
                return []
            conn.execute(
                "UPDATE run_attempts SET node = %s WHERE node = %s AND finished_at IS NULL"
                " AND run_id = ANY(%s)",
                (self.node_id, dead_node, ids),
            )
            _audit(conn, self.actor, "node.takeover", detail={"node": dead_node, "runs": ids})
            return _fetch_runs(conn, sql.SQL("WHERE id = ANY(%s) ORDER BY id"), (ids,))

    def audit(self, action: str, *, run_id: int | None = None, detail: dict[str, Any]) -> None:
        with self._conn() as conn:
            _audit(conn, self.actor, action, run_id=run_id, detail=detail)


def _fetch_runs(
    conn: psycopg.Connection[Any], tail: sql.Composable, params: tuple[Any, ...] | list[Any]
) -> list[Run]:
    cur = conn.cursor(row_factory=class_row(Run))
    cur.execute(RUNS_SELECT + tail, params)
    runs = cur.fetchall()
    if not runs:
        return runs
    acur = conn.cursor(row_factory=class_row(Attempt))
    acur.execute(ATTEMPTS_OF_RUNS, ([r.id for r in runs],))
    return attach_attempts(runs, acur.fetchall())


def _audit(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    *,
    run_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(AUDIT_INSERT, (actor, action, None, run_id, Jsonb(detail or {})))
