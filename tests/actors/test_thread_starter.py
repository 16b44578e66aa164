"""ThreadStarter and StartedByStarter (actors/thread_starter.py), with real threads and actors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from runvisor.actors.thread_starter import StartedByStarter, ThreadStarter


@pytest.fixture
def starter() -> Iterator[ThreadStarter]:
    starter = ThreadStarter(workers=3)
    yield starter
    starter.stop()


class Probe(StartedByStarter):
    def __init__(self, starter: ThreadStarter) -> None:
        super().__init__()
        self.thread_starter = starter

    def on_receive(self, message: Any) -> Any:
        return threading.current_thread().name


def test_several_threads_are_started_at_once(starter: ThreadStarter) -> None:
    """Each start waits for its thread to come up: the starter's workers wait side by side."""
    together = threading.Barrier(3, timeout=10)
    passed: list[int] = []
    failures: list[BaseException] = []
    for n in range(3):
        starter.start(lambda n=n: (together.wait(), passed.append(n)), failures.append)
    starter.stop()  # waits for the three
    assert failures == [] and sorted(passed) == [0, 1, 2]


def test_a_start_that_fails_is_reported_to_its_owner(starter: ThreadStarter) -> None:
    failed = threading.Event()
    errors: list[BaseException] = []

    def cannot() -> None:
        raise RuntimeError("can't start new thread")

    starter.start(cannot, lambda exc: (errors.append(exc), failed.set()))
    assert failed.wait(10)
    assert [str(error) for error in errors] == ["can't start new thread"]


def test_start_returns_the_ref_before_the_actors_thread_runs(starter: ThreadStarter) -> None:
    """pykka's start() waits for the new thread; a StartedByStarter actor's does not: what is
    told meanwhile waits in its inbox."""
    busy = threading.Event()
    for _ in range(3):  # every worker held: nothing can start the actor's thread yet
        starter.start(lambda: busy.wait(10) and None, lambda exc: None)
    ref = Probe.start(starter)
    try:
        answer = ref.ask("where?", block=False)
        assert ref.is_alive()
        assert not [t for t in threading.enumerate() if t.name.startswith("Probe-")]
        busy.set()
        assert answer.get(timeout=10).startswith("Probe-")  # in its own thread, once started
    finally:
        busy.set()
        ref.stop()


def test_after_the_starter_stopped_a_start_happens_in_the_callers_thread() -> None:
    starter = ThreadStarter(workers=1)
    starter.stop()
    ref = Probe.start(starter)
    try:
        assert ref.ask("where?", timeout=10).startswith("Probe-")
    finally:
        ref.stop()
    assert not pykka.ActorRegistry.get_by_urn(ref.actor_urn)
