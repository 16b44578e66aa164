"""GET /api/v1/nodes and /api/v1/nodes/{node_id} against real nodes: what each node says of
itself, its lease, its running and queued runs, and `lost` once its lease is gone."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from runvisor import __version__
from tests.fix_service import VIEWER, Service, wait_until

NODE_FIELDS = [
    "id", "labels", "version", "state", "started_at", "seen_at", "lease_expires_at", "capacity",
    "running", "queued", "mechanism", "drain_deadline", "detached_until",
]  # fmt: skip


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_nodes_show_labels_lease_capacity_counts_and_lost(
    service_factory: Callable[..., Service],
) -> None:
    tag = os.getpid()
    id_a, id_b = f"nodes-a-{tag}", f"nodes-b-{tag}"
    a = service_factory(id_a, RUNVISOR_NODE_LABELS="zone=a,gpu=1", RUNVISOR_MAX_RUNNING="1")
    b = service_factory(id_b, RUNVISOR_LEASE_TTL_S="5")
    api = a.api

    def node(node_id: str) -> dict[str, Any]:
        response = api.get(f"/api/v1/nodes/{node_id}", token=VIEWER)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = wait_until(lambda: (n := node(id_a))["lease_expires_at"] and n, 30, "a's lease")
    assert list(first) == NODE_FIELDS
    assert first["labels"] == {"gpu": "1", "zone": "a"} and first["version"] == __version__
    assert first["state"] == "up" and first["capacity"] == 1
    mechanism = api.get("/readyz").json()["runs"]["process_tracking"]
    assert first["mechanism"] == mechanism
    # The lease (TTL 15 s, renewed every second) expires within 15 s of when it was read.
    before = datetime.now(UTC)
    expires = parse(node(id_a)["lease_expires_at"])
    assert before <= expires <= datetime.now(UTC) + timedelta(seconds=15)
    assert first["drain_deadline"] is None and first["detached_until"] is None
    # seen_at moves with the heartbeat.
    wait_until(lambda: node(id_a)["seen_at"] > first["seen_at"], 10, "a heartbeat")

    # Running and queued runs: one running (capacity 1), one queued that a may take, and one
    # queued that only b may take (counted for b, not for a).
    sleeper = api.create_command("sleep 60")
    running = api.start_run(sleeper["id"], node=id_a)
    api.wait_status(running["id"], "running")
    waiting = api.start_run(sleeper["id"], labels={"gpu": "1"})
    on_b_only = api.start_run(sleeper["id"], node=id_b, labels={"zone": "b"})
    counts = node(id_a)
    assert (counts["running"], counts["queued"]) == (1, 1), counts
    # b lacks zone=b, so it may not take that run either: it says why.
    assert api.run(on_b_only["id"])["queued_reason"] == f"node {id_b} does not have labels zone=b"
    b_now = node(id_b)
    assert (b_now["running"], b_now["queued"]) == (0, 0), b_now

    listed = api.get("/api/v1/nodes", token=VIEWER).json()
    ids = [n["id"] for n in listed["items"]]
    assert ids == sorted(ids) and {id_a, id_b} <= set(ids)
    assert {n["id"]: n["state"] for n in listed["items"]}[id_b] == "up"

    # A node killed outright keeps its row and its last word (up) in PostgreSQL; once its
    # lease has lapsed, it is lost.
    b.kill()
    lost = wait_until(lambda: (n := node(id_b))["state"] == "lost" and n, 30, "b to be lost")
    assert lost["lease_expires_at"] is None

    assert api.get("/api/v1/nodes/no-such-node").status_code == 404
    bad = api.get("/api/v1/nodes/a%20b")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_id"
    assert api.get("/api/v1/nodes", token="").status_code == 401
    for run in (running, waiting, on_b_only):
        api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
