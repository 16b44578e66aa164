"""The JSON bodies of the nodes routes and of placement, as response models (see responses.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from runvisor.http.responses import ResponseModel, Timestamp
from runvisor.store.nodes import NodeRecord

NodeStateLabel = Literal["up", "draining", "detached", "stopped", "lost"]


class Node(ResponseModel):
    id: Annotated[str, Field(description="RUNVISOR_NODE_ID")]
    labels: Annotated[dict[str, str], Field(description="RUNVISOR_NODE_LABELS")]
    version: Annotated[str, Field(description="the runvisor version it runs")]
    state: Annotated[
        NodeStateLabel,
        Field(
            description="up: takes runs; draining, detached, stopped: as the node said; lost: "
            "up or draining by its last word, but its lease in Redis is gone"
        ),
    ]
    started_at: Timestamp
    seen_at: Annotated[Timestamp, Field(description="its last heartbeat in PostgreSQL")]
    lease_expires_at: Annotated[
        Timestamp | None,
        Field(description="when its lease in Redis expires unless renewed; null: no lease"),
    ]
    capacity: Annotated[int, Field(description="RUNVISOR_MAX_RUNNING; 0: no limit")]
    running: Annotated[int, Field(description="its runs now running or restarting")]
    queued: Annotated[
        int, Field(description="queued runs it may take (placement: any node or this one, labels)")
    ]
    mechanism: Annotated[
        str,
        Field(description="how it sees an attempt end and finds its processes: cgroup, scan"),
    ]
    drain_deadline: Timestamp | None
    detached_until: Timestamp | None

    @classmethod
    def of(
        cls,
        record: NodeRecord,
        *,
        state: str,
        lease_expires_at: datetime | None,
        running: int,
        queued: int,
    ) -> Node:
        return cls.model_validate(
            {
                "id": record.id,
                "labels": dict(sorted(record.labels.items())),
                "version": record.version,
                "state": state,
                "started_at": record.started_at,
                "seen_at": record.seen_at,
                "lease_expires_at": lease_expires_at,
                "capacity": record.capacity,
                "running": running,
                "queued": queued,
                "mechanism": record.mechanism,
                "drain_deadline": record.drain_deadline,
                "detached_until": record.detached_until,
            }
        )


class NodeList(ResponseModel):
    items: Annotated[list[Node], Field(description="every node that has ever started, by id")]
