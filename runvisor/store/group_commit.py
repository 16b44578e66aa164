"""Group commit: one writer thread per node records what many RunActors ask, a batch per
transaction.

A RunActor that stores output, records its process or ends its attempt hands the write to the
writer and waits for the answer, as it waited for its own transaction before. The writer takes
the first write that arrives and every other one already waiting (up to MAX_BATCH_WRITES and
MAX_BATCH_BYTES), performs them in one transaction (the output of all runs in one statement, or
one pipelined round trip for large chunks) and answers each once the transaction has committed:
nothing is acknowledged that is not durable, and one commit (one WAL flush) serves the batch.
With a single caller the batch is that one write: no timer, no added latency.

Each write keeps its own fence (node and attempt) and its own answer: a fenced write in a batch
answers "lost" without touching the others. PostgreSQL unreachable fails the whole batch with
StoreUnavailable (each caller retries, as before); a row lock not obtained in time, a deadlock
or any other error is retried write by write, so that one stuck or bad write fails alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger

MAX_BATCH_WRITES = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024  # output bytes in one transaction, at most (one write more)

# A batch that failed on these is retried write by write: only the writes of a run whose row
# another transaction holds (lock_timeout) or that met a deadlock fail, and are retried later.
ALONE_AFTER = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)

log = get_logger(__name__)

BatchObserver = Callable[[int, float], None]  # (writes in the batch, seconds it took)


class Write(Protocol):
    """A write the writer performs in a batch. Writes of one type are given to `write_all`
    together, in arrival order; it returns one answer per write."""

    @property
    def size_bytes(self) -> int: ...

    @classmethod
    def write_all(cls, conn: psycopg.Connection[Any], writes: Sequence[Any]) -> list[Any]: ...


class Pending:
    """A write and its answer, which one caller waits for. A bare lock, held until the answer
    is set: a concurrent.futures.Future builds a Condition (and its RLock) per write, which
    cost a twelfth of a busy node's time."""

    __slots__ = ("_answer", "_done", "_error", "write")

    def __init__(self, write: Write) -> None:
        self.write = write
        self._answer: Any = None
        self._error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def set_result(self, answer: Any) -> None:
        self._answer = answer
        self._done.release()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.release()

    def result(self) -> Any:
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return self._answer


class GroupCommit:
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        name: str = "runvisor-journal-writer",
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._pool = pool
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._carry: Pending | None = None  # taken from the queue, left for the next batch
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def write(self, write: Write) -> Any:
        """Perform `write` in the next batch; its answer once the batch has committed. Raises
        StoreUnavailable if PostgreSQL could not be reached (nothing of it was committed)."""
        return self.submit(write).result()

    def submit(self, write: Write) -> Pending:
        """Queue `write` for the next batch, without waiting: Pending.result() waits for its
        answer (a caller with many writes submits them all, then waits once per write)."""
        if self._closed:
            raise StoreUnavailable("the journal is closed")
        pending = Pending(write)
        self._queue.put(pending)
        return pending

    def queued(self) -> int:
        """Writes waiting for a batch (not counting the one being performed)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Perform what is queued, then stop the writer."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._perform(batch)
            if stop:
                return

    def _next_batch(self) -> tuple[list[Pending], bool]:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        batch, size = [first], first.write.size_bytes
        while len(batch) < MAX_BATCH_WRITES and size < MAX_BATCH_BYTES:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += item.write.size_bytes
        return batch, False

    def _perform(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        try:
            answers = self._transaction(batch)
        except StoreUnavailable as exc:
            if len(batch) > 1 and isinstance(exc.__cause__, ALONE_AFTER):
                for pending in batch:  # the others need not wait for the locked row
                    self._perform([pending])
                return
            for pending in batch:
                pending.set_exception(exc)
            return
        except Exception:
            if len(batch) == 1:
                log.exception("journal write failed")
                batch[0].set_exception(StoreUnavailable("the journal write failed"))
                return
            log.warning("journal batch failed; its writes are retried one by one", exc_info=True)
            for pending in batch:
                self._perform([pending])
            return
        for pending, answer in zip(batch, answers, strict=True):
            pending.set_result(answer)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.monotonic() - started)

    def _transaction(self, batch: list[Pending]) -> list[Any]:
        groups: dict[type[Write], list[int]] = {}
        for index, pending in enumerate(batch):
            groups.setdefault(type(pending.write), []).append(index)
        answers: list[Any] = [None] * len(batch)
        try:
            with self._pool.connection() as conn, conn.transaction():
                for kind, indexes in groups.items():
                    results = kind.write_all(conn, [batch[i].write for i in indexes])
                    for i, result in zip(indexes, results, strict=True):
                        answers[i] = result
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        return answers
