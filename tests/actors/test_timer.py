"""The shared timer thread, in process, with real actors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from runvisor.actors.timer import TimerService
from tests.polling import wait_until


class Recorder(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[float, Any]] = []

    def on_receive(self, message: Any) -> Any:
        if message == "dump":
            return list(self.received)
        self.received.append((time.monotonic(), message))
        return None


@pytest.fixture
def timers() -> Iterator[TimerService]:
    service = TimerService()
    service.start()
    yield service
    service.stop()
    assert not service._thread.is_alive()


@pytest.fixture
def recorder() -> Iterator[pykka.ActorRef[Recorder]]:
    ref = Recorder.start()
    yield ref
    ref.stop()


@pytest.fixture(autouse=True)
def no_leaked_actors_or_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    assert pykka.ActorRegistry.get_all() == []
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()],
        5,
        "threads started by the test to end",
    )


def test_ticks_arrive_in_deadline_order_and_not_before_their_time(
    timers: TimerService, recorder: pykka.ActorRef[Recorder]
) -> None:
    start = time.monotonic()
    timers.schedule(0.3, recorder, "late")
    timers.schedule(0.1, recorder, "early")
    timers.schedule(0.0, recorder, "now")
    got = wait_until(lambda: len(d := recorder.ask("dump")) == 3 and d, 5, "three ticks")
    assert [m for _, m in got] == ["now", "early", "late"]
    assert got[1][0] - start >= 0.1 and got[2][0] - start >= 0.3


def test_a_cancelled_tick_is_never_delivered(
    timers: TimerService, recorder: pykka.ActorRef[Recorder]
) -> None:
    handle = timers.schedule(0.1, recorder, "cancelled")
    timers.schedule(0.2, recorder, "kept")
    handle.cancel()
    wait_until(lambda: recorder.ask("dump"), 5, "the kept tick")
    assert [m for _, m in recorder.ask("dump")] == ["kept"]
    assert timers.pending() == 0


def test_a_tick_for_a_dead_actor_is_dropped_and_the_timer_goes_on(
    timers: TimerService, recorder: pykka.ActorRef[Recorder]
) -> None:
    dead = Recorder.start()
    dead.stop()
    timers.schedule(0.0, dead, "lost")
    timers.schedule(0.05, recorder, "after")
    wait_until(lambda: recorder.ask("dump"), 5, "the tick after the dead one")


def test_one_thread_serves_a_thousand_timers(
    timers: TimerService, recorder: pykka.ActorRef[Recorder]
) -> None:
    threads_before = threading.active_count()
    for i in range(1000):
        timers.schedule(0.001 * (i % 50), recorder, i)
    assert threading.active_count() == threads_before
    wait_until(lambda: len(recorder.ask("dump")) == 1000, 10, "a thousand ticks")
