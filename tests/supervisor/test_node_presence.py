"""NodePresence against real PostgreSQL and Redis: the node registers, beats, registers again
when its row is gone, says why queued runs wait, and rides out a PostgreSQL outage in its own
thread while the lease goes on being renewed."""

from __future__ import annotations

import time

import psycopg

from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.live import LiveState
from runvisor.supervisor.lease import NodeLease
from runvisor.supervisor.node_presence import NodePresence
from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.polling import wait_until

NODE = "presence-node"


def presence(journal: RunJournal, live: LiveState, **kw: float) -> NodePresence:
    return NodePresence(
        registry=journal.nodes,
        live=live,
        node_id=NODE,
        labels={"zone": "a"},
        version="9.9",
        capacity=3,
        mechanism="scan",
        **kw,
    )


def seen_at(database_url: str) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT seen_at FROM nodes WHERE id = %s", (NODE,)).fetchone()
    return None if row is None else row[0]


def test_registers_beats_and_registers_again_when_its_row_is_gone(
    database_url: str, live: LiveState
) -> None:
    journal = open_journal(database_url, node_id=NODE)
    node = presence(journal, live, beat_s=0.1)
    try:
        node.start()  # registered before start() returns
        record = journal.nodes.get(NODE)
        assert record is not None
        assert (record.labels, record.version, record.capacity, record.mechanism) == (
            {"zone": "a"},
            "9.9",
            3,
            "scan",
        )
        first = record.seen_at
        wait_until(lambda: seen_at(database_url) > first, 10, "a heartbeat")  # type: ignore[operator]
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM nodes WHERE id = %s", (NODE,))
        wait_until(lambda: journal.nodes.get(NODE), 10, "the row to be registered again")
    finally:
        node.stop()
        journal.close()


def test_a_postgresql_outage_holds_the_presence_thread_only(
    database_url: str, live: LiveState, pg_proxy: TcpProxy
) -> None:
    journal = open_journal(proxied_database_url(database_url, pg_proxy), node_id=NODE)
    node = presence(journal, live, beat_s=0.1)
    lease = NodeLease(live, node_id=NODE, ttl_s=2.0)
    try:
        node.start()
        assert journal.nodes.get(NODE) is not None
        pg_proxy.pause()  # calls hang, as with a stopped server
        before = seen_at(database_url)
        # The lease is renewed from elsewhere (the Supervisor's tick) and never waits for it.
        for _ in range(20):
            started = time.monotonic()
            lease.renew()
            assert time.monotonic() - started < 0.5
            time.sleep(0.1)
        assert live.lease_held(NODE) is True
        assert seen_at(database_url) == before  # no heartbeat got through
        pg_proxy.resume()
        wait_until(lambda: seen_at(database_url) > before, 30, "the heartbeat to resume")  # type: ignore[operator]
    finally:
        pg_proxy.resume()
        node.stop()
        journal.close()
