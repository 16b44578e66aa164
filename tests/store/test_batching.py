"""StatementBatch (store/batching.py) on its own: who goes in which batch, and nobody waits for
ever. Its statements against PostgreSQL: test_stop_requests.py, test_run_inserts.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from runvisor.errors import ServiceUnavailable, StoreUnavailable
from runvisor.store.batching import StatementBatch


class Recorder:
    """A write that answers each ask doubled, once let go (`release`)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None
        self.writing = asyncio.Event()

    async def write(self, asks: Sequence[int]) -> list[int]:
        self.batches.append(list(asks))
        self.writing.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [ask * 2 for ask in asks]


async def first_write(recorder: Recorder) -> list[list[int]]:
    await asyncio.wait_for(recorder.writing.wait(), 5)
    return recorder.batches


async def test_the_first_goes_alone_and_those_that_come_meanwhile_go_together() -> None:
    recorder = Recorder()
    batch: StatementBatch[int, int] = StatementBatch(recorder.write, name="test", max_batch=3)
    first = asyncio.ensure_future(batch.submit(1))
    assert await first_write(recorder) == [[1]]
    later = [asyncio.ensure_future(batch.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8, 10, 12]
    assert recorder.batches == [[1], [2, 3, 4], [5, 6]]  # at most max_batch each, in order


async def test_a_store_outage_fails_the_whole_batch_once() -> None:
    recorder = Recorder()
    recorder.fail_with = StoreUnavailable("PostgreSQL is unavailable")
    batch: StatementBatch[int, int] = StatementBatch(recorder.write, name="test")
    first = asyncio.ensure_future(batch.submit(1))
    assert await first_write(recorder) == [[1]]
    later = [asyncio.ensure_future(batch.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    recorder.release.set()
    answers = await asyncio.gather(first, *later, return_exceptions=True)
    assert [type(answer) for answer in answers] == [StoreUnavailable] * 3
    assert recorder.batches == [[1], [2, 3]]  # not retried one by one: nothing was written


async def test_a_cancelled_writer_leaves_no_asker_waiting() -> None:
    recorder = Recorder()
    batch: StatementBatch[int, int] = StatementBatch(recorder.write, name="test")
    asks = [asyncio.ensure_future(batch.submit(n)) for n in (1, 2)]
    assert await first_write(recorder) == [[1, 2]]
    [writer] = [task for task in asyncio.all_tasks() if task.get_name() == "test"]
    writer.cancel()
    for ask in asks:
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await ask
    recorder.release.set()
    assert await batch.submit(5) == 10  # a new writer for the next ask
