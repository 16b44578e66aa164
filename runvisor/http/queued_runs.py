"""The queued runs for GET /metrics: counted in PostgreSQL at each scrape, never waited on long.

A count that does not come within QUEUED_TIMEOUT_S is left running rather than cancelled:
psycopg cancels a query by asking the server, which takes up to 10 s when the server does not
answer, and the scrape would wait for that. At most one count is in flight per app, so a
PostgreSQL that hangs holds one pooled connection here, not one per scrape.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import RunStatus
from runvisor.store.history import History

QUEUED_TIMEOUT_S = 1.0
log = get_logger(__name__)


class QueuedRuns:
    def __init__(self, history: History) -> None:
        self._history = history
        self._pending: asyncio.Task[int] | None = None  # a count that outlived its scrape

    async def count(self) -> int | None:
        """How many runs wait in PostgreSQL (all nodes); None if it did not say in time."""
        if self._pending is not None and not self._pending.done():
            return None  # the last count still waits on PostgreSQL: start no second one
        task = asyncio.create_task(self._count())
        task.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({task}, timeout=QUEUED_TIMEOUT_S)
        if not done:
            self._pending = task
            log.info("queued runs not counted: PostgreSQL did not answer in time")
            return None
        self._pending = None
        try:
            return task.result()
        except (StoreUnavailable, psycopg.Error, OSError) as exc:
            log.info("queued runs not counted", error=str(exc) or type(exc).__name__)
            return None

    async def _count(self) -> int:
        # The total of a page of one: a count over the (status, id) index.
        _, total = await self._history.list_runs(
            command_id=None, statuses=[RunStatus.QUEUED], limit=1, offset=0
        )
        return int(total)


def _retrieve(task: asyncio.Task[int]) -> None:
    """Collect the outcome of a count nobody waits for any more (no 'never retrieved' log)."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
