"""Drains, and runs handed from one node to another, in PostgreSQL.

A drain is recorded on the node's row (`nodes.state = 'draining'`, `drain_deadline`) by
whichever node answered the request (`request_drain`, async, the HTTP side); the drained node
reads it back (`Drains.drain_request`, sync, its Supervisor) should the control message be
lost. A draining node hands each run that is due to restart back to the queue
(`release_restarting`), where another node claims it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from runvisor.store.columns import AUDIT_INSERT
from runvisor.store.connection import AsyncConnect, Connect

# The drain's deadline as seconds from now, in PostgreSQL's clock: no clock of a node counts.
DRAIN_REQUEST = (
    "SELECT extract(epoch FROM drain_deadline - now())::float8 FROM nodes"
    " WHERE id = %s AND state = 'draining'"
)
RELEASE_RESTARTING = (
    "UPDATE runs SET status = 'queued', node = NULL, next_attempt_at = NULL"
    " WHERE id = %s AND node = %s AND status = 'restarting' AND stop_requested_at IS NULL"
    " RETURNING attempt"
)
STILL_OWNED = "SELECT id, attempt FROM runs WHERE id = ANY(%s) AND node = %s AND status = 'running'"


@dataclass(frozen=True, slots=True)
class DrainOrder:
    """What the node's row says: it is draining; `deadline_s` seconds from now (negative:
    passed) what still runs is stopped; None: no deadline."""

    deadline_s: float | None


class Drains:
    """The Supervisor's side (sync, on the journal's pool)."""

    def __init__(self, connect: Connect, *, node_id: str, actor: str) -> None:
        self._conn = connect
        self.node_id = node_id
        self.actor = actor

    def drain_request(self) -> DrainOrder | None:
        """The drain recorded for this node, if any."""
        with self._conn() as conn:
            row = conn.execute(DRAIN_REQUEST, (self.node_id,)).fetchone()
        return None if row is None else DrainOrder(row[0])

    def release_restarting(self, run_id: int) -> bool:
        """Hand a run due to restart back to the queue (this node drains): another node claims
        it; its attempts so far stay. False if it is not this node's restarting run."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(RELEASE_RESTARTING, (run_id, self.node_id)).fetchone()
            if row is None:
                return False
            detail = Jsonb({"node": self.node_id, "attempt": row[0]})
            conn.execute(AUDIT_INSERT, (self.actor, "run.released", None, run_id, detail))
        return True

    def still_owned(self, attempts: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of these (run id, attempt) this node still runs: the others were taken over."""
        if not attempts:
            return set()
        with self._conn() as conn:
            rows = conn.execute(
                STILL_OWNED, ([run_id for run_id, _ in attempts], self.node_id)
            ).fetchall()
        return {(row[0], row[1]) for row in rows} & set(attempts)


# The HTTP side


REQUEST_DRAIN = (
    "UPDATE nodes SET state = 'draining',"
    " drain_deadline = CASE WHEN %s::float8 IS NULL THEN NULL"
    "                  ELSE now() + make_interval(secs => %s::float8) END"
    " WHERE id = %s AND state IN ('up', 'draining')"
    " RETURNING state, drain_deadline"
)


@dataclass(frozen=True, slots=True)
class DrainRecorded:
    node_id: str
    drain_deadline: datetime | None


class DrainRequests:
    """The HTTP side (async, History's pool)."""

    def __init__(self, connect: AsyncConnect) -> None:
        self._conn = connect

    async def request(
        self, node_id: str, *, deadline_s: float | None, actor: str
    ) -> DrainRecorded | str | None:
        """Record a drain of `node_id`: the recorded drain; the node's state when it cannot
        be drained (detached or stopped: nothing there to hand over); None: no such node."""
        return await _request_drain(self._conn, node_id, deadline_s=deadline_s, actor=actor)


async def _request_drain(
    connect: AsyncConnect, node_id: str, *, deadline_s: float | None, actor: str
) -> DrainRecorded | str | None:
    async with connect() as conn, conn.transaction():
        cur = await conn.execute(REQUEST_DRAIN, (deadline_s, deadline_s, node_id))
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute("SELECT state FROM nodes WHERE id = %s", (node_id,))
            found = await cur.fetchone()
            return None if found is None else str(found[0])
        detail = Jsonb({"node": node_id, "deadline_s": deadline_s})
        await conn.execute(AUDIT_INSERT, (actor, "node.drain", None, None, detail))
    return DrainRecorded(node_id=node_id, drain_deadline=row[1])
