"""Which RunActors are waiting on PostgreSQL or Redis right now, and since when.

The Supervisor pings every RunActor and ends the attempt of one that does not answer in time
(wedged). A RunActor blocked in a store call (a locked row, a paused server, an exhausted pool)
is not wedged: it answers as soon as the store does, and its run must not pay for a slow store.
The journal and the live state mark every call they make here, so no call site of an actor can
be forgotten; a RunActor registers its thread under its name, and the Supervisor asks by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class _ThreadCalls:
    owner: str
    depth: int = 0  # store calls under way (one inside another counts once)
    since: float | None = None  # monotonic time the outermost call under way began
    left_at: float | None = None  # monotonic time the last call ended


@dataclass(frozen=True, slots=True)
class StoreWait:
    """What an owner's thread is doing with the stores, in time.monotonic() seconds."""

    waiting_since: float | None  # inside a store call since then; None: not in one now
    left_at: float | None  # when its last store call ended; None: none has yet


NOT_WAITING = StoreWait(waiting_since=None, left_at=None)


class StoreWaits:
    """Thread-safe. Only registered threads are tracked; a call from any other is free."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[int, _ThreadCalls] = {}  # thread ident -> its calls
        self._owners: dict[str, int] = {}  # owner name -> its thread ident

    def register(self, owner: str) -> None:
        """Track the calling thread's store calls under `owner` (e.g. an actor's urn)."""
        thread = threading.get_ident()
        with self._lock:
            previous = self._threads.get(thread)
            if previous is not None:  # a thread's ident is reused once it has ended
                self._owners.pop(previous.owner, None)
            self._threads[thread] = _ThreadCalls(owner)
            self._owners[owner] = thread

    def unregister(self, owner: str) -> None:
        with self._lock:
            thread = self._owners.pop(owner, None)
            if thread is not None:
                self._threads.pop(thread, None)

    @contextmanager
    def call(self) -> Iterator[None]:
        """Mark the calling thread as waiting on a store for the duration of the block.

        Without the lock: a thread's record is written by that thread alone (and a dict read
        is atomic), and a reader that sees `since` and `left_at` of two moments errs by one
        call at most. With a thousand RunActors, that lock was a twelfth of the node's time."""
        calls = self._threads.get(threading.get_ident())
        if calls is None:
            yield
            return
        if calls.depth == 0:
            calls.since = time.monotonic()
        calls.depth += 1
        try:
            yield
        finally:
            calls.depth -= 1
            if calls.depth == 0:
                calls.since, calls.left_at = None, time.monotonic()

    def of(self, owner: str) -> StoreWait:
        with self._lock:
            thread = self._owners.get(owner)
            calls = self._threads.get(thread) if thread is not None else None
            if calls is None:
                return NOT_WAITING
            return StoreWait(waiting_since=calls.since, left_at=calls.left_at)
