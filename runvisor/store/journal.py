"""History as the actors write it: claims, attempts, output chunks and outcomes (sync pool).

Every write that belongs to an attempt is fenced by (node, attempt): a node that comes back
after its runs were taken over cannot overwrite the newer attempt's record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from runvisor import metrics
from runvisor.errors import StoreUnavailable
from runvisor.models import Run, RunStatus
from runvisor.store.columns import (
    ATTEMPT_COLUMNS,
    AUDIT_INSERT,
    RUN_COLUMNS,
    RUNS_WITH_ATTEMPTS_SELECT,
    attempts_from_json,
)
from runvisor.store.connection import CONNECTION_OPTIONS, check_if_idle, note_returned
from runvisor.store.drains import Drains
from runvisor.store.group_commit import BatchObserver, GroupCommit, Write
from runvisor.store.journal_writes import EndAttempt, RecordProcess
from runvisor.store.nodes import NodeRegistry
from runvisor.store.output_writes import AppendOutput, EndWithOutput, HeldOutput, OutputBatch
from runvisor.store.waits import StoreWaits

# Queued runs this node may take: any node, or this one; labels all among this node's. A run
# pinned elsewhere is skipped, not waited on (the others behind it are still taken in order).
QUEUED_FOR_NODE = sql.SQL(
    "status = 'queued' AND (place_node IS NULL OR place_node = %s) AND place_labels <@ %s"
)
# A claimed attempt's process marker when none is given: 32 random hex digits, made by
# PostgreSQL (core since 13) for each run a claim finds, not 64 in Python per claim.
NEW_MARKER = sql.SQL("replace(gen_random_uuid()::text, '-', '')")
JOURNAL_OPTIONS = CONNECTION_OPTIONS["options"] + " -c lock_timeout=2000"


def open_journal(
    conninfo: str,
    *,
    node_id: str,
    node_labels: Mapping[str, str] | None = None,
    max_size: int = 8,
    store_waits: StoreWaits | None = None,
    on_batch: BatchObserver | None = None,
) -> RunJournal:
    pool = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        # A row another transaction holds fails the write in seconds (it is retried) rather
        # than holding the writer's whole batch: one locked run must not stall the others.
        # Autocommit: a read is one round trip; writes say conn.transaction().
        kwargs={**CONNECTION_OPTIONS, "options": JOURNAL_OPTIONS, "autocommit": True},
        # Short: a RunActor waits this long per write while PostgreSQL is down, and between
        # tries it handles stops, exits and timeouts.
        timeout=2.0,
        check=check_if_idle,  # see connection.CHECK_IDLE_AFTER_S
        reset=note_returned,
    )
    pool.open(wait=False)
    return RunJournal(
        pool,
        node_id=node_id,
        node_labels=node_labels,
        store_waits=store_waits,
        on_batch=on_batch,
    )


class RunJournal:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        node_id: str,
        node_labels: Mapping[str, str] | None = None,
        store_waits: StoreWaits | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._pool = pool
        self.node_id = node_id
        self.node_labels = dict(node_labels or {})  # RUNVISOR_NODE_LABELS: what it may claim
        self.actor = f"node:{node_id}"
        # Every call is marked there: a RunActor waiting on PostgreSQL is not wedged.
        self._waits = store_waits or StoreWaits()
        self._on_batch = on_batch
        self._writer = GroupCommit(pool, on_batch=self._observe_batch)
        self.nodes = NodeRegistry(self._conn)  # the fleet's table: registration, heartbeats
        self.drains = Drains(self._conn, node_id=node_id, actor=self.actor)  # read back, handed on

    def close(self) -> None:
        self._writer.close()  # what is queued is written first
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        # Cancelled by statement_timeout or lock_timeout is an OperationalError too: too slow
        # is unavailable, and the caller retries; it never fails a run.
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
        """Take a queued run, or this node's restarting run, and open its next attempt. (A
        restarting run another node took over is that node's to restart.)"""
        condition = sql.SQL("id = %s AND (status = 'queued' OR node = %s)")
        runs = self._claim(
            condition, (run_id, self.node_id), limit=1, boot_id=boot_id, marker=marker
        )
        return runs[0] if runs else None

    def claim_next_queued(self, *, marker: str, boot_id: str) -> Run | None:
        """Take the oldest queued run no other node is claiming right now."""
        runs = self._claim(
            QUEUED_FOR_NODE, self._placement_params(), limit=1, boot_id=boot_id, marker=marker
        )
        return runs[0] if runs else None

    def claim_queued(self, *, limit: int, boot_id: str) -> list[Run]:
        """Take up to `limit` of the oldest queued runs no other node is claiming right now,
        in one transaction: a burst of starts costs one claim, not one each. Each attempt gets
        a new random process marker. Only runs this node may take (placement: any node or this
        one, and labels this node has); the oldest of those first."""
        return self._claim(QUEUED_FOR_NODE, self._placement_params(), limit=limit, boot_id=boot_id)

    def _placement_params(self) -> tuple[Any, ...]:
        return (self.node_id, Jsonb(self.node_labels))

    def _claim(
        self,
        condition: sql.Composable,
        params: tuple[Any, ...],
        *,
        limit: int,
        boot_id: str,
        marker: str | None = None,
    ) -> list[Run]:
        """One transaction: the runs are ours, each with a new attempt number, and each
        attempt's row holds its process marker before any process exists, so a crash right
        after the spawn still leaves a way to find (and kill) what was started. A run whose
        stop was requested is never claimed."""
        if limit < 1:
            return []
        # One statement (autocommit: its own transaction), one round trip: the attempts' rows
        # are inserted from the claimed runs, and each run comes back with its attempts, the
        # new one included (rows a statement inserts are not in its snapshot: taken from `n`).
        query = sql.SQL(
            "WITH c AS (UPDATE runs SET status = 'running', node = %s, attempt = attempt + 1,"
            " pid = NULL, exit_code = NULL, signal = NULL, reason = NULL, next_attempt_at = NULL,"
            " queued_reason = NULL, started_at = coalesce(started_at, now())"
            " WHERE id IN (SELECT id FROM runs WHERE {} AND status IN ('queued', 'restarting')"
            "              AND stop_requested_at IS NULL"
            "              ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING {}),"
            " n AS (INSERT INTO run_attempts (run_id, attempt, node, process_marker, boot_id,"
            " output_offset) SELECT id, attempt, %s, coalesce(%s::text, {}), %s, output_bytes"
            " FROM c RETURNING {})"
            " SELECT c.*, (SELECT coalesce(json_agg(a ORDER BY a.attempt), '[]'::json) FROM"
            " (SELECT {} FROM run_attempts WHERE run_id = c.id"
            "  UNION ALL SELECT * FROM n WHERE n.run_id = c.id) AS a) AS attempts"
            " FROM c ORDER BY c.id"
        ).format(condition, RUN_COLUMNS, NEW_MARKER, ATTEMPT_COLUMNS, ATTEMPT_COLUMNS)
        with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(Run))
            cur.execute(query, (self.node_id, *params, limit, self.node_id, marker, boot_id))
            return attempts_from_json(cur.fetchall())

    def start_attempt(self, run: Run, *, pid: int, start_ticks: int) -> None:
        """The attempt's process exists: record its identity (pid + start time)."""
        self._write(
            RecordProcess(self.node_id, run.id, run.attempt, pid=pid, start_ticks=start_ticks)
        )

    def append_output(
        self,
        run_id: int,
        attempt: int,
        *,
        offset: int,
        chunks: Sequence[bytes],
        max_output_bytes: int,
    ) -> bool:
        """Store output chunks from byte `offset`; False if this node lost the run. Bytes stored
        already are skipped; past `max_output_bytes`, head and tail only (AppendOutput)."""
        [answer] = self.append_outputs(
            [OutputBatch(run_id, attempt, offset, chunks, max_output_bytes)]
        )
        if isinstance(answer, StoreUnavailable):
            raise answer
        return answer

    def append_outputs(self, outputs: Sequence[OutputBatch]) -> list[bool | StoreUnavailable]:
        """The output of many attempts, in the group commit's next batches (one, up to 256):
        each True, False if this node lost the run, or the StoreUnavailable its batch met."""
        with self._waits.call():
            writes = [self._writer.submit(AppendOutput(self.node_id, *o)) for o in outputs]
            answers: list[bool | StoreUnavailable] = []
            for write in writes:
                try:
                    stored: int | None = write.result()  # None: the run is lost
                except StoreUnavailable as exc:
                    answers.append(exc)
                    continue
                metrics.output_stored(stored or 0)
                answers.append(stored is not None)
        return answers

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
        output: HeldOutput | None = None,
    ) -> RunStatus | None:
        """Close the attempt and set the run's status; None if this node lost the run.
        `output`, the attempt's last batch, is stored in the same transaction, before.

        PostgreSQL has the last word on a stop: if one was requested (whatever the RunActor
        knew), the run ends `stopped` and is not restarted. Returns the status stored.
        """
        write = EndAttempt(
            self.node_id,
            self.actor,
            run.id,
            run.attempt,
            exit_code=exit_code,
            signal=signal,
            reason=reason,
            leftovers_killed=leftovers_killed,
            run_status=run_status,
            run_reason=run_reason,
            restart_delay_s=restart_delay_s,
        )
        if output is None:
            stored: RunStatus | None = self._write(write)
            return stored
        append = AppendOutput(
            self.node_id, run.id, run.attempt, output.offset, output.chunks, output.max_output_bytes
        )
        answer: tuple[int | None, RunStatus | None] = self._write(EndWithOutput(append, write))
        if answer[0] is not None:  # bytes stored anew
            metrics.output_stored(answer[0])
        return answer[1]

    def _observe_batch(self, size: int, seconds: float) -> None:
        metrics.observe_journal_batch(size, seconds)
        if self._on_batch is not None:
            self._on_batch(size, seconds)

    def queued_writes(self) -> int:
        return self._writer.queued()

    def _write(self, write: Write) -> Any:
        # Marked as a store call: a RunActor waiting for its batch is not wedged.
        with self._waits.call():
            return self._writer.write(write)

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
        """Other nodes that own running or restarting runs, but for those that detached and
        whose detach time is not over (their runs go on unattended until then)."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT node FROM runs WHERE status IN ('running', 'restarting')"
                " AND node IS NOT NULL AND node <> %s AND NOT EXISTS (SELECT 1 FROM nodes"
                "   WHERE nodes.id = runs.node AND nodes.state = 'detached'"
                "   AND nodes.detached_until > now())",
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
    """Runs with their attempts, in one statement (so both agree)."""
    cur = conn.cursor(row_factory=class_row(Run))
    cur.execute(RUNS_WITH_ATTEMPTS_SELECT + tail, params)
    return attempts_from_json(cur.fetchall())


def _audit(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    *,
    run_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(AUDIT_INSERT, (actor, action, None, run_id, Jsonb(detail or {})))
