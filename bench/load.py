"""Closed-loop load: N workers each repeating one operation until a deadline, counted."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable


def threaded_rate(threads: int, seconds: float, operation: Callable[[], None]) -> float:
    """Operations per second of `threads` threads each repeating `operation` for `seconds`
    (the last ones started finish; the time counts until they have)."""
    counts = [0] * threads
    failures: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def work(index: int) -> None:
        try:
            while time.perf_counter() < deadline:
                operation()
                counts[index] += 1
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise failures[0]
    return sum(counts) / elapsed


async def async_rate(
    workers: int, seconds: float, operation: Callable[[], Awaitable[None]]
) -> float:
    """The same with `workers` asyncio tasks."""
    deadline = time.perf_counter() + seconds
    count = 0

    async def work() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await operation()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(workers)))
    return count / (time.perf_counter() - t0)


def echo_hi() -> bytes:
    """The short run itself, as the raw limit runs it: bash starting, printing, exiting."""
    return subprocess.run(["bash", "-c", "echo hi"], capture_output=True, check=True).stdout


def raw_echo() -> None:
    if echo_hi() != b"hi\n":
        raise RuntimeError("bash -c 'echo hi' did not print hi")
