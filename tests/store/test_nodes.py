"""The nodes registry against a real PostgreSQL: registration (upsert), heartbeat, states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from runvisor.placement import NodeView
from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.nodes import NodeState, effective_state

NODE = "nodes-test-node"


def test_register_upserts_and_a_restart_makes_the_node_up_again(journal: RunJournal) -> None:
    nodes = journal.nodes
    assert nodes.get(NODE) is None
    assert not nodes.heartbeat(NODE)  # no row yet: the caller registers
    nodes.register(NODE, labels={"gpu": "1"}, version="0.1.0", capacity=4, mechanism="scan")
    first = nodes.get(NODE)
    assert first is not None
    assert (first.labels, first.capacity, first.mechanism, first.state) == (
        {"gpu": "1"},
        4,
        "scan",
        "up",
    )
    until = datetime.now(UTC) + timedelta(minutes=5)
    assert nodes.set_state(NODE, NodeState.DETACHED, detached_until=until)
    detached = nodes.get(NODE)
    assert detached is not None and detached.state == "detached"
    assert detached.detached_until == until
    assert nodes.heartbeat(NODE)
    nodes.register(NODE, labels={}, version="0.2.0", capacity=0, mechanism="cgroup")
    again = nodes.get(NODE)
    assert again is not None
    assert (again.labels, again.version, again.state, again.detached_until) == (
        {},
        "0.2.0",
        "up",
        None,
    )
    assert again.started_at >= first.started_at
    assert [n.id for n in nodes.all()] == [NODE]


def test_lost_is_derived_never_stored(journal: RunJournal) -> None:
    journal.nodes.register(NODE, labels={}, version="v", capacity=1, mechanism="scan")
    with pytest.raises(ValueError):
        journal.nodes.set_state(NODE, NodeState.LOST)
    assert not journal.nodes.set_state("no-such-node", NodeState.DRAINING)
    assert effective_state("up", False) == "lost"
    assert effective_state("draining", False) == "lost"
    assert effective_state("up", None) == "up"  # Redis cannot tell: no guess
    assert effective_state("detached", False) == "detached"
    assert effective_state("stopped", False) == "stopped"


def queue_runs(database_url: str, placements: list[tuple[str | None, dict[str, str]]]) -> list[int]:
    """Queued runs of `true`, oldest first, each with its placement (node, labels)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO commands (code, max_output_bytes) VALUES ('true', 1000) RETURNING id"
        ).fetchone()
        assert row is not None
        ids = []
        for node, labels in placements:
            inserted = conn.execute(
                "INSERT INTO runs (command_id, code, max_output_bytes, place_node, place_labels,"
                " queued_reason) VALUES (%s, 'true', 1000, %s, %s, 'waiting') RETURNING id",
                (row[0], node, Jsonb(labels)),
            ).fetchone()
            assert inserted is not None
            ids.append(inserted[0])
    return ids


def test_a_node_claims_only_the_runs_it_matches_oldest_first_and_clears_their_reason(
    database_url: str,
) -> None:
    gpu = open_journal(database_url, node_id="gpu-node", node_labels={"gpu": "1", "zone": "a"})
    plain = open_journal(database_url, node_id="plain-node", node_labels={"zone": "b"})
    try:
        ids = queue_runs(
            database_url,
            [
                ("gpu-node", {}),  # 0: pinned by id
                (None, {"gpu": "1"}),  # 1: by label
                (None, {}),  # 2: anywhere
                ("plain-node", {}),  # 3
                (None, {"gpu": "1", "zone": "b"}),  # 4: no node has both
                ("gpu-node", {"zone": "b"}),  # 5: the node lacks the label
                (None, {}),  # 6
            ],
        )
        # Pinned runs at the head of the queue do not block the ones behind them.
        first = plain.claim_queued(limit=1, boot_id="test")
        assert [r.id for r in first] == [ids[2]]
        assert first[0].queued_reason is None and first[0].node == "plain-node"
        claimed = gpu.claim_queued(limit=10, boot_id="test")
        assert [r.id for r in claimed] == [ids[0], ids[1], ids[6]]
        assert all(r.queued_reason is None and r.attempt == 1 for r in claimed)
        assert [r.id for r in plain.claim_queued(limit=10, boot_id="test")] == [ids[3]]
        assert gpu.claim_queued(limit=10, boot_id="test") == []
        with psycopg.connect(database_url) as conn:
            left = conn.execute(
                "SELECT id FROM runs WHERE status = 'queued' ORDER BY id"
            ).fetchall()
        assert [r[0] for r in left] == [ids[4], ids[5]]
    finally:
        gpu.close()
        plain.close()


def test_queued_reasons_are_set_per_placement_and_cleared_when_a_node_may_take_them(
    database_url: str, journal: RunJournal
) -> None:
    ids = queue_runs(
        database_url,
        [
            (None, {"gpu": "1"}),
            ("node-c", {}),
            ("node-b", {}),
            ("node-b", {"gpu": "1"}),
            (None, {}),
        ],
    )
    nodes = [
        NodeView(id="node-a", labels={"zone": "a"}, state="up"),
        NodeView(id="node-b", labels={}, state="up"),
    ]
    journal.nodes.refresh_queued_reasons(nodes)

    def reasons() -> list[str | None]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT queued_reason FROM runs WHERE id = ANY(%s) ORDER BY id", (ids,)
            ).fetchall()
        return [r[0] for r in rows]

    assert reasons() == [
        "no live node has labels gpu=1",
        "node node-c is not up (it has never registered)",
        None,
        "node node-b does not have labels gpu=1",
        None,
    ]
    nodes.append(NodeView(id="node-c", labels={"gpu": "1"}, state="lost"))
    journal.nodes.refresh_queued_reasons(nodes)
    assert reasons()[1] == "node node-c is not up (lost)"
    nodes[-1] = NodeView(id="node-c", labels={"gpu": "1"}, state="up")
    journal.nodes.refresh_queued_reasons(nodes)
    assert reasons() == [None, None, None, "node node-b does not have labels gpu=1", None]
