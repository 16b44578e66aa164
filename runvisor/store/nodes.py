"""The fleet in PostgreSQL (table `nodes`): each node registers itself at start, refreshes
`seen_at` with its lease, and says its state (up, draining, detached, stopped).

`lost` is never stored: a node is lost when its state is up or draining and its lease in
Redis is gone; the reader that has Redis at hand decides (see `effective_state`).

Two faces: `NodeRegistry` (sync, on the journal's pool: the node's own Supervisor and its
helpers) and `NodeReads` (async, on History's pool: the HTTP side).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from runvisor.placement import NodeView, Placement, unmet_reason
from runvisor.store.connection import AsyncConnect, Connect


class NodeState(StrEnum):
    """What a node says of itself (stored), plus `lost` (derived, never stored)."""

    UP = "up"
    DRAINING = "draining"
    DETACHED = "detached"
    STOPPED = "stopped"
    LOST = "lost"


# The states in which a node holds (or may take) runs and keeps a lease: without a lease it is
# lost.
LEASED_STATES = frozenset({NodeState.UP, NodeState.DRAINING})


@dataclass(slots=True)
class NodeRecord:
    """One row of `nodes`, as stored."""

    id: str
    labels: dict[str, str]
    version: str
    capacity: int  # RUNVISOR_MAX_RUNNING (0: no limit)
    mechanism: str  # the attempt-end mechanism: cgroup | scan
    state: str
    started_at: datetime
    seen_at: datetime
    drain_deadline: datetime | None
    detached_until: datetime | None


NODE_COLUMNS = (
    "id, labels, version, capacity, mechanism, state, started_at, seen_at,"
    " drain_deadline, detached_until"
)

# At start: the node is up, with what it is now (labels, version, capacity may have changed
# since its last start); whatever state it said before is over.
REGISTER = (
    "INSERT INTO nodes (id, labels, version, capacity, mechanism, state, started_at, seen_at)"
    " VALUES (%s, %s, %s, %s, %s, 'up', now(), now())"
    " ON CONFLICT (id) DO UPDATE SET labels = EXCLUDED.labels, version = EXCLUDED.version,"
    " capacity = EXCLUDED.capacity, mechanism = EXCLUDED.mechanism, state = 'up',"
    " started_at = now(), seen_at = now(), drain_deadline = NULL, detached_until = NULL"
)
# One statement, no lock held beyond the row: cheap enough for every lease renewal.
HEARTBEAT = "UPDATE nodes SET seen_at = now() WHERE id = %s"
SET_STATE = (
    "UPDATE nodes SET state = %s, drain_deadline = %s, detached_until = %s, seen_at = now()"
    " WHERE id = %s"
)

# Per node: its running runs (running or restarting, owned by it) and the queued runs it may
# take (placement: any node or this one, labels it has), as the claim decides.
COUNTS = (
    "SELECT n.id,"
    " (SELECT count(*) FROM runs WHERE node = n.id AND status IN ('running', 'restarting')),"
    " (SELECT count(*) FROM runs WHERE status = 'queued'"
    "   AND (place_node IS NULL OR place_node = n.id) AND place_labels <@ n.labels)"
    " FROM nodes n WHERE n.id = ANY(%s)"
)
# The placements queued runs ask for, each once: the reasons are worked out per placement.
QUEUED_PLACEMENTS = "SELECT DISTINCT place_node, place_labels FROM runs WHERE status = 'queued'"
SET_REASONS = (
    "UPDATE runs SET queued_reason = %s WHERE status = 'queued'"
    " AND place_node IS NOT DISTINCT FROM %s AND place_labels = %s"
    " AND queued_reason IS DISTINCT FROM %s"
)
SET_REASON = "UPDATE runs SET queued_reason = %s WHERE id = %s AND status = 'queued'"

LeaseHeld = Callable[[str], bool | None]


def effective_state(stored: str, lease_held: bool | None) -> str:
    """The state the API shows: `lost` for a node that should hold a lease and does not.
    `lease_held` None (Redis cannot tell) keeps the stored state: never `lost` on a guess."""
    if lease_held is False and stored in LEASED_STATES:
        return str(NodeState.LOST)
    return stored


def views(records: list[NodeRecord], held: Mapping[str, bool | None]) -> list[NodeView]:
    """The nodes as placement sees them: stored state, `lost` where a lease is missing."""
    return [
        NodeView(id=r.id, labels=r.labels, state=effective_state(r.state, held.get(r.id)))
        for r in records
    ]


class NodeRegistry:
    """The node's own writes and the Supervisor's reads (sync, the journal's pool). Every
    method raises StoreUnavailable (from `connect`) when PostgreSQL is down."""

    def __init__(self, connect: Connect) -> None:
        self._conn = connect

    def register(
        self,
        node_id: str,
        *,
        labels: Mapping[str, str],
        version: str,
        capacity: int,
        mechanism: str,
    ) -> None:
        """Upsert this node's row at start: state `up`, started and seen now."""
        with self._conn() as conn:
            conn.execute(REGISTER, (node_id, Jsonb(dict(labels)), version, capacity, mechanism))

    def heartbeat(self, node_id: str) -> bool:
        """Refresh `seen_at`; False if the node has no row (register it again)."""
        with self._conn() as conn:
            return conn.execute(HEARTBEAT, (node_id,)).rowcount > 0

    def set_state(
        self,
        node_id: str,
        state: NodeState | str,
        *,
        drain_deadline: datetime | None = None,
        detached_until: datetime | None = None,
    ) -> bool:
        """Record what the node says it is now (up, draining, detached, stopped); the deadline
        fields not given are cleared. False if the node has no row. `lost` is refused: it is
        derived, never stored."""
        state = NodeState(state)
        if state is NodeState.LOST:
            raise ValueError("`lost` is derived from the lease, never stored")
        with self._conn() as conn:
            cur = conn.execute(SET_STATE, (str(state), drain_deadline, detached_until, node_id))
            return cur.rowcount > 0

    def get(self, node_id: str) -> NodeRecord | None:
        with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(NodeRecord))
            cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = %s", (node_id,))
            return cur.fetchone()

    def all(self) -> list[NodeRecord]:
        with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(NodeRecord))
            cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY id")
            return cur.fetchall()

    def views(self, lease_held: LeaseHeld) -> list[NodeView]:
        """Every node with the state the API shows (Redis asked for the nodes that should
        hold a lease)."""
        records = self.all()
        held = {r.id: lease_held(r.id) for r in records if r.state in LEASED_STATES}
        return views(records, held)

    def refresh_queued_reasons(self, nodes: list[NodeView]) -> int:
        """Set (or clear) `queued_reason` of every queued run by whether a node that is up may
        take it: one statement per distinct placement. Returns the runs changed."""
        changed = 0
        with self._conn() as conn:
            placements = conn.execute(QUEUED_PLACEMENTS).fetchall()
            for node, labels in placements:
                reason = unmet_reason(Placement(node, labels), nodes)
                cur = conn.execute(SET_REASONS, (reason, node, Jsonb(labels), reason))
                changed += cur.rowcount
        return changed


class NodeReads:
    """The HTTP side's reads (async, History's pool)."""

    def __init__(self, connect: AsyncConnect) -> None:
        self._conn = connect

    async def get(self, node_id: str) -> NodeRecord | None:
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(NodeRecord))
            await cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = %s", (node_id,))
            return await cur.fetchone()

    async def all(self) -> list[NodeRecord]:
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(NodeRecord))
            await cur.execute(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY id")
            return await cur.fetchall()

    async def counts(self, node_ids: list[str]) -> dict[str, tuple[int, int]]:
        """Node id -> (running runs, queued runs it may take)."""
        async with self._conn() as conn:
            cur = await conn.execute(COUNTS, (node_ids,))
            return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    async def set_queued_reason(self, run_id: int, reason: str) -> bool:
        """Say why a run waits, unless it has been claimed meanwhile."""
        async with self._conn() as conn:
            return (await conn.execute(SET_REASON, (reason, run_id))).rowcount > 0
