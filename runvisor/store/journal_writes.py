"""The writes a RunActor (or the Supervisor's closer) hands the group-commit writer, each able
to perform many of its kind in one transaction.

Every write is fenced by (node, attempt) and status `running`: a node that comes back after its
runs were taken over cannot overwrite the newer attempt's record. Rows of `runs` are locked in
id order, so two batches (or a batch and a claim) never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from runvisor.models import RunStatus
from runvisor.store.columns import AUDIT_INSERT


@dataclass(frozen=True, slots=True)
class RecordProcess:
    """The attempt's process exists: its identity (pid + start time)."""

    node: str
    run_id: int
    attempt: int
    pid: int
    start_ticks: int

    @property
    def size_bytes(self) -> int:
        return 0

    @classmethod
    def write_all(cls, conn: psycopg.Connection[Any], writes: Sequence[RecordProcess]) -> list[Any]:
        writes = sorted(writes, key=lambda w: w.run_id)
        columns = (
            [w.run_id for w in writes],
            [w.attempt for w in writes],
            [w.node for w in writes],
            [w.pid for w in writes],
            [w.start_ticks for w in writes],
        )
        values = "unnest(%s::bigint[], %s::int[], %s::text[], %s::int[], %s::bigint[])"
        conn.execute(
            "UPDATE runs SET pid = v.pid FROM " + values + " AS v(id, attempt, node, pid, ticks)"
            " WHERE runs.id = v.id AND runs.attempt = v.attempt AND runs.node = v.node",
            columns,
        )
        conn.execute(
            "UPDATE run_attempts SET pid = v.pid, pid_start_ticks = v.ticks FROM "
            + values
            + " AS v(id, attempt, node, pid, ticks) WHERE run_attempts.run_id = v.id"
            " AND run_attempts.attempt = v.attempt AND run_attempts.node = v.node",
            columns,
        )
        return [None] * len(writes)


@dataclass(frozen=True, slots=True)
class EndAttempt:
    """Close the attempt and set the run's status; answers the status stored, or None if this
    node lost the run. PostgreSQL has the last word on a stop: if one was requested (whatever
    the RunActor knew), the run ends `stopped` and is not restarted."""

    node: str
    actor: str
    run_id: int
    attempt: int
    exit_code: int | None
    signal: int | None
    reason: str
    leftovers_killed: int
    run_status: RunStatus
    run_reason: str | None
    restart_delay_s: float | None

    @property
    def size_bytes(self) -> int:
        return 0

    @classmethod
    def write_all(cls, conn: psycopg.Connection[Any], writes: Sequence[EndAttempt]) -> list[Any]:
        """Three statements for the whole batch. A second end of the same run in one batch (the
        closer's and a woken RunActor's) is performed after, alone: the fence lets one win."""
        answers: list[Any] = [None] * len(writes)
        first: dict[int, int] = {}  # run id -> index of its first end in the batch
        later: list[int] = []
        for i, write in enumerate(writes):
            if write.run_id in first:
                later.append(i)
            else:
                first[write.run_id] = i
        batch = [writes[i] for i in sorted(first.values(), key=lambda i: writes[i].run_id)]
        if batch:
            stored = _end_attempts(conn, batch)
            for run_id, i in first.items():
                answers[i] = stored.get(run_id)
        for i in later:
            answers[i] = writes[i].perform(conn)
        return answers

    @property
    def restarting(self) -> bool:
        return self.restart_delay_s is not None and not self.run_status.is_terminal

    def audit_detail(self, stored: RunStatus) -> Jsonb:
        return Jsonb(
            {
                "attempt": self.attempt,
                "reason": self.reason,
                "exit_code": self.exit_code,
                "signal": self.signal,
                "leftovers_killed": self.leftovers_killed,
                "restart_delay_s": (
                    self.restart_delay_s if stored is RunStatus.RESTARTING else None
                ),
            }
        )

    def perform(self, conn: psycopg.Connection[Any]) -> RunStatus | None:
        restarting = self.restarting
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
                "status": str(self.run_status),
                "exit_code": self.exit_code,
                "signal": self.signal,
                "reason": self.run_reason,
                "terminal": self.run_status.is_terminal,
                "restarting": restarting,
                "delay": self.restart_delay_s or 0.0,
                "run_id": self.run_id,
                "attempt": self.attempt,
                "node": self.node,
            },
        ).fetchone()
        if row is None:
            return None
        stored = RunStatus(row[0])
        conn.execute(
            "UPDATE run_attempts SET finished_at = coalesce(finished_at, now()),"
            " exit_code = %s, signal = %s, reason = %s, leftovers_killed = %s"
            " WHERE run_id = %s AND attempt = %s AND node = %s",
            (
                self.exit_code,
                self.signal,
                self.reason,
                self.leftovers_killed,
                self.run_id,
                self.attempt,
                self.node,
            ),
        )
        conn.execute(
            AUDIT_INSERT,
            (self.actor, f"run.{stored}", None, self.run_id, self.audit_detail(stored)),
        )
        return stored


# The same statements as EndAttempt.perform, for many runs at once (one row each).
_END_VALUES = (
    "unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::int[], %s::int[],"
    " %s::text[], %s::bool[], %s::bool[], %s::float8[])"
    " AS v(id, attempt, node, status, exit_code, signal, reason, terminal, restarting, delay)"
)
_END_RUNS = (
    "UPDATE runs SET"
    " status = CASE WHEN runs.stop_requested_at IS NULL THEN v.status ELSE 'stopped' END,"
    " exit_code = v.exit_code, signal = v.signal,"
    " reason = CASE WHEN runs.stop_requested_at IS NULL OR v.status = 'stopped'"
    "   THEN v.reason ELSE 'stopped by ' || runs.stop_requested_by END,"
    " finished_at = CASE WHEN runs.stop_requested_at IS NOT NULL OR v.terminal THEN now() END,"
    " next_attempt_at = CASE WHEN runs.stop_requested_at IS NULL AND v.restarting"
    "   THEN now() + make_interval(secs => v.delay) END,"
    " restart_count = runs.restart_count"
    "   + CASE WHEN runs.stop_requested_at IS NULL AND v.restarting THEN 1 ELSE 0 END"
    " FROM " + _END_VALUES + " WHERE runs.id = v.id AND runs.attempt = v.attempt"
    " AND runs.node = v.node AND runs.status = 'running' RETURNING runs.id, runs.status"
)
_END_ATTEMPTS = (
    "UPDATE run_attempts SET finished_at = coalesce(finished_at, now()),"
    " exit_code = v.exit_code, signal = v.signal, reason = v.reason, leftovers_killed = v.killed"
    " FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::int[], %s::int[], %s::text[],"
    " %s::int[]) AS v(id, attempt, node, exit_code, signal, reason, killed)"
    " WHERE run_attempts.run_id = v.id AND run_attempts.attempt = v.attempt"
    " AND run_attempts.node = v.node"
)
_END_AUDIT = (
    "INSERT INTO audit (actor, action, run_id, detail)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::jsonb[])"
)


def _end_attempts(
    conn: psycopg.Connection[Any], writes: Sequence[EndAttempt]
) -> dict[int, RunStatus]:
    """End the attempts of `writes` (one per run, in run id order); the status stored for
    each run this node still held."""
    rows = conn.execute(
        _END_RUNS,
        (
            [w.run_id for w in writes],
            [w.attempt for w in writes],
            [w.node for w in writes],
            [str(w.run_status) for w in writes],
            [w.exit_code for w in writes],
            [w.signal for w in writes],
            [w.run_reason for w in writes],
            [w.run_status.is_terminal for w in writes],
            [w.restarting for w in writes],
            [w.restart_delay_s or 0.0 for w in writes],
        ),
    ).fetchall()
    stored = {run_id: RunStatus(status) for run_id, status in rows}
    ended = [w for w in writes if w.run_id in stored]
    if ended:
        conn.execute(
            _END_ATTEMPTS,
            (
                [w.run_id for w in ended],
                [w.attempt for w in ended],
                [w.node for w in ended],
                [w.exit_code for w in ended],
                [w.signal for w in ended],
                [w.reason for w in ended],
                [w.leftovers_killed for w in ended],
            ),
        )
        conn.execute(
            _END_AUDIT,
            (
                [w.actor for w in ended],
                [f"run.{stored[w.run_id]}" for w in ended],
                [w.run_id for w in ended],
                [w.audit_detail(stored[w.run_id]) for w in ended],
            ),
        )
    return stored
