"""One shared timer thread: a heap of deadlines that tell() actors their ticks.

pykka has no timers, and a threading.Timer per run would be a thread per run.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pykka

from runvisor.logs import get_logger

log = get_logger(__name__)


@dataclass(order=True, slots=True)
class TimerHandle:
    deadline: float
    seq: int
    target: pykka.ActorRef[Any] = field(compare=False)
    message: object = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        # Lazy deletion: the timer thread skips cancelled entries when they come due.
        self.cancelled = True


class TimerService:
    """Delivers `message` to `target` with tell() once `delay_s` has passed."""

    def __init__(self, name: str = "runvisor-timers") -> None:
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._running = False
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def schedule(self, delay_s: float, target: pykka.ActorRef[Any], message: object) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay_s), next(self._seq), target, message)
        with self._cond:
            heapq.heappush(self._heap, handle)
            if self._heap[0] is handle:
                self._cond.notify()
        return handle

    def pending(self) -> int:
        with self._cond:
            return sum(1 for h in self._heap if not h.cancelled)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and (not self._heap or self._heap[0].cancelled):
                    if self._heap:
                        heapq.heappop(self._heap)
                        continue
                    self._cond.wait()
                if not self._running:
                    return
                wait_s = self._heap[0].deadline - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                due = heapq.heappop(self._heap)
            self._deliver(due)

    @staticmethod
    def _deliver(handle: TimerHandle) -> None:
        if handle.cancelled:
            return
        try:
            handle.target.tell(handle.message)
        except pykka.ActorDeadError:
            pass  # the actor ended before its tick: nothing to do
        except Exception:  # never let one bad delivery end every timer
            log.exception("timer delivery failed", message=type(handle.message).__name__)


class ActorTimers:
    """The timers of one actor, by name: scheduling a name again replaces its timer."""

    def __init__(self, service: TimerService, target: pykka.ActorRef[Any]) -> None:
        self._service = service
        self._target = target
        self._handles: dict[str, TimerHandle] = {}

    def schedule(self, name: str, delay_s: float, message: object) -> None:
        self.cancel(name)
        self._handles[name] = self._service.schedule(delay_s, self._target, message)

    def get(self, name: str) -> TimerHandle | None:
        return self._handles.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._handles

    def fired(self, name: str) -> None:
        """The timer's message has arrived: it is no longer scheduled."""
        self._handles.pop(name, None)

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def is_scheduled(self, message: object) -> bool:
        """Whether `message` belongs to a timer still scheduled here. A tick cancelled after
        the timer thread had sent it is not: it is stale."""
        return any(handle.message is message for handle in self._handles.values())
