"""The nodes registry against a real PostgreSQL: registration (upsert), heartbeat, states."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.nodes import NodeState, effective_state

NODE = "nodes-test-node"


@pytest.fixture
def journal(database_url: str) -> Iterator[RunJournal]:
    journal = open_journal(database_url, node_id=NODE)
    yield journal
    journal.close()


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
