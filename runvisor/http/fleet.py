"""The fleet as the HTTP side sees it: each node's row in PostgreSQL with its lease in Redis
(the state `lost` is read from both). For the nodes routes (nodes.py) and the reason a run
waits at its creation (control.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from runvisor.placement import NodeView
from runvisor.store.history import History
from runvisor.store.nodes import LEASED_STATES, NodeRecord, effective_state
from runvisor.store.redis_keys import RedisKeys

LEASE_READ_TIMEOUT_S = 2.0
NO_KEY, NO_EXPIRY = -2, -1  # what PTTL answers for a missing key, and for one without a TTL


class NodeLeases:
    """The nodes' leases in Redis, read with PTTL (one pipelined round trip)."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def remaining_ms(self, node_ids: list[str]) -> dict[str, int] | None:
        """Node id -> PTTL of its lease (NO_KEY: none); None when Redis cannot tell."""
        if not node_ids:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for node_id in node_ids:
                    pipe.pttl(self._keys.node_lease(node_id))
                answers = await asyncio.wait_for(pipe.execute(), LEASE_READ_TIMEOUT_S)
        except (aioredis.RedisError, OSError, TimeoutError):
            return None
        return {node_id: int(ms) for node_id, ms in zip(node_ids, answers, strict=True)}


@dataclass(frozen=True, slots=True)
class FleetNode:
    record: NodeRecord
    state: str  # as shown: the stored state, or lost
    lease_expires_at: datetime | None

    @property
    def view(self) -> NodeView:
        return NodeView(id=self.record.id, labels=self.record.labels, state=self.state)


async def read_fleet(
    history: History, leases: NodeLeases, node_id: str | None = None
) -> list[FleetNode]:
    """Every node (or the one named), with its state as the API shows it."""
    if node_id is None:
        records = await history.nodes.all()
    else:
        record = await history.nodes.get(node_id)
        records = [] if record is None else [record]
    remaining = await leases.remaining_ms([r.id for r in records])
    now = datetime.now(UTC)
    fleet = []
    for record in records:
        ms = None if remaining is None else remaining.get(record.id)
        held = None if ms is None else ms != NO_KEY
        expires = now + timedelta(milliseconds=ms) if ms is not None and ms >= 0 else None
        state = effective_state(record.state, held if record.state in LEASED_STATES else None)
        fleet.append(FleetNode(record, state, expires))
    return fleet
