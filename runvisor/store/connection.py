"""Connection settings shared by every PostgreSQL connection of the service."""

from __future__ import annotations

from typing import Any

# A server that stops answering (packets dropped, not refused) must fail calls in seconds,
# not hang them: connect, keepalive and TCP user timeouts, and a statement timeout.
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    # A call to a server that drops packets fails in seconds and is retried, rather than
    # holding a RunActor (which the Supervisor then knows waits on the store, not wedged).
    "tcp_user_timeout": 5000,
    "options": "-c statement_timeout=60000",
}
