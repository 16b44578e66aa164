"""Requests that arrive together, written together: one statement for all that came while the
last one was under way.

The HTTP side records a start or a stop before it answers. One statement each made a burst
queue for the history pool's connections (and for the GIL at every round trip): 200 starts at
once were answered over 0.8 s, 100 stops over 0.37 s. A StatementBatch writes the first request
at once (alone: no waiting for company, no added latency) and every request that comes while
that statement is under way in the next one: one round trip for many. The statement is the
caller's (`write`); this module only gathers and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from runvisor.errors import ServiceUnavailable, StoreUnavailable

AskT = TypeVar("AskT")
AnswerT = TypeVar("AnswerT")

MAX_BATCH = 500  # requests per statement: a bound on its parameters


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[AskT, AnswerT]):
    ask: AskT
    answer: asyncio.Future[AnswerT]


class StatementBatch(Generic[AskT, AnswerT]):
    """`write(asks)` records many asks in one statement and returns their answers, in order.

    A batch that fails: every asker gets the error when the store is unavailable (nothing was
    written); any other error (one ask PostgreSQL refused, say) is never shared, each ask is
    written again alone, so only its own asker sees it.
    """

    def __init__(
        self,
        write: Callable[[Sequence[AskT]], Awaitable[Sequence[AnswerT]]],
        *,
        name: str,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._waiting: list[_Waiting[AskT, AnswerT]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, ask: AskT) -> AnswerT:
        answer: asyncio.Future[AnswerT] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(ask, answer)
        self._waiting.append(waiting)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name=self._name)
        return await answer

    async def _write_all(self) -> None:
        batch: list[_Waiting[AskT, AnswerT]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._write_batch(batch)
            batch = []
        finally:
            self._writer = None
            # Cancelled (the loop is closing): no asker is left waiting for ever.
            _fail(batch + self._waiting, ServiceUnavailable("the service is shutting down"))
            self._waiting = []

    async def _write_batch(self, batch: list[_Waiting[AskT, AnswerT]]) -> None:
        try:
            answers = await self._write([waiting.ask for waiting in batch])
        except StoreUnavailable as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for waiting in batch:  # someone's ask failed it: each alone, its error its own
                await self._write_batch([waiting])
            return
        for waiting, answer in zip(batch, answers, strict=True):
            if not waiting.answer.done():  # (its request may have been cancelled)
                waiting.answer.set_result(answer)


def _fail(batch: Sequence[_Waiting[AskT, AnswerT]], error: Exception) -> None:
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(error)
