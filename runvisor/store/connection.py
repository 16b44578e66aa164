"""Connection settings shared by every PostgreSQL connection of the service."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

# What the stores' parts are given to get a connection: a pool's `connection`, as a factory.
Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
AsyncConnect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]

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


# A connection handed back less than this long ago is given out again unchecked: a busy pool
# costs no round trip per checkout. One idle longer (or never used) is pinged first, so that an
# outage is found at checkout and the connection replaced. A connection that broke while in
# use is never given out again: the pool discards it when it comes back.
CHECK_IDLE_AFTER_S = 2.0

_returned_at: weakref.WeakKeyDictionary[psycopg.BaseConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)


def _suspect(conn: psycopg.BaseConnection[Any]) -> bool:
    returned = _returned_at.get(conn)
    return returned is None or time.monotonic() - returned > CHECK_IDLE_AFTER_S


def note_returned(conn: psycopg.Connection[Any]) -> None:
    """The pool's `reset` callback: when the connection was last seen working."""
    _returned_at[conn] = time.monotonic()


def check_if_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's `check` callback: a round trip only for a connection idle long enough."""
    if _suspect(conn):
        ConnectionPool.check_connection(conn)


async def note_returned_async(conn: psycopg.AsyncConnection[Any]) -> None:
    _returned_at[conn] = time.monotonic()


async def check_if_idle_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if _suspect(conn):
        await AsyncConnectionPool.check_connection(conn)
