"""A History whose statements are counted, for tests of how many round trips a call costs."""

from __future__ import annotations

from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool

from runvisor.store.history import History


class CountingCursor(psycopg.AsyncCursor[Any]):
    """Counts the statements sent, whichever cursor of the connection sends them."""

    statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Self:
        CountingCursor.statements += 1
        return await super().execute(*args, **kwargs)


async def counting_history(database_url: str) -> tuple[AsyncConnectionPool, History]:
    """An open pool (close it: `async with pool`) whose statements CountingCursor counts, and
    a History on it."""
    kwargs = {"autocommit": True, "cursor_factory": CountingCursor}
    pool = AsyncConnectionPool(database_url, kwargs=kwargs, open=False, max_size=4)
    await pool.open(wait=True)
    return pool, History(pool, default_max_output_bytes=1000)
