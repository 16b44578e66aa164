"""Start-up checks of the database beside the migrations (store/migrate.py)."""

from __future__ import annotations

import psycopg
from structlog.testing import capture_logs

from runvisor.store.migrate import apply_migrations, warn_without_autovacuum


def test_the_node_warns_when_the_servers_autovacuum_is_off(database_url: str) -> None:
    """This test's server decides which way: the machine's PostgreSQL here runs without
    autovacuum, the embedded one with it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        off = conn.execute("SHOW autovacuum").fetchone() == ("off",)
        with capture_logs() as logs:
            assert warn_without_autovacuum(conn) is off
    warnings = [e for e in logs if "autovacuum is off" in e["event"]]
    assert [e["log_level"] for e in warnings] == (["warning"] if off else [])
    with capture_logs() as logs:
        assert apply_migrations(database_url) == []  # (the template applied them): checks still
    assert len([e for e in logs if "autovacuum is off" in e["event"]]) == (1 if off else 0)
