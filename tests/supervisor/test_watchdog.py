"""The watchdog, in process, with real actors and a real PostgreSQL: a RunActor that does not
answer is wedged, one waiting on a store is not, and a dead one is failed or gone; one that
answers is pinged again a quarter of the timeout later, not at every look."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from runvisor import protocol as m
from runvisor.store.journal import RunJournal
from runvisor.store.waits import StoreWaits
from runvisor.supervisor.watchdog import DEAD_GRACE_S, Finding, LiveAttempt, Verdict, Watchdog
from tests.fix_journal import claimed_run
from tests.polling import wait_until

NODE = "watchdog-test-node"
PING_TIMEOUT_S = 0.3


class StandIn(pykka.ThreadingActor):
    """A RunActor's stand-in: answers pings, unless told ("hold", in_store_call) first; then it
    blocks until released, inside a store call if so told (as on a locked row), and after
    such a call is busy for half a ping timeout more."""

    def __init__(self, store_waits: StoreWaits, release: threading.Event) -> None:
        super().__init__()
        self.store_waits = store_waits
        self.release = release

    def on_start(self) -> None:
        self.store_waits.register(self.actor_urn)

    def on_receive(self, message: Any) -> Any:
        match message:
            case m.Ping():
                return True
            case ("hold", True):
                with self.store_waits.call():
                    self.release.wait(30)
                time.sleep(PING_TIMEOUT_S / 2)  # busy a while more, outside the store call
            case ("hold", False):
                self.release.wait(30)
        return None


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def store_waits() -> StoreWaits:
    return StoreWaits()


def watchdog(journal: RunJournal, store_waits: StoreWaits) -> Watchdog:
    return Watchdog(journal=journal, store_waits=store_waits, ping_timeout_s=PING_TIMEOUT_S)


def entry(store_waits: StoreWaits, release: threading.Event) -> LiveAttempt:
    ref: Any = StandIn.start(store_waits, release)
    return LiveAttempt(ref=ref, attempt=1, marker=uuid.uuid4().hex)


def test_a_run_actor_that_does_not_answer_is_wedged_after_the_ping_timeout(
    journal: RunJournal, store_waits: StoreWaits, release: threading.Event
) -> None:
    dog = watchdog(journal, store_waits)
    live = {1: entry(store_waits, release), 2: entry(store_waits, release)}
    live[1].ref.tell(("hold", False))
    pinged_at = time.monotonic()
    assert dog.check(live) == []

    findings: list[Finding] = wait_until(lambda: dog.check(live), 5, "a finding")

    assert time.monotonic() - pinged_at > PING_TIMEOUT_S
    assert [(f.run_id, f.verdict) for f in findings] == [(1, Verdict.WEDGED)]


def test_a_run_actor_that_answers_is_pinged_again_a_quarter_of_the_timeout_later(
    journal: RunJournal, store_waits: StoreWaits, release: threading.Event
) -> None:
    dog = watchdog(journal, store_waits)
    live = {1: entry(store_waits, release)}
    assert dog.check(live) == []
    first = live[1].ping
    assert first is not None and first[1].get(timeout=5) is True
    assert dog.check(live) == [] and live[1].ping is first  # answered; the next is not due

    def pinged_again() -> tuple[float, Any] | None:
        assert dog.check(live) == []
        return live[1].ping if live[1].ping is not first else None

    again = wait_until(pinged_again, 5, "the next ping")
    assert again[0] - first[0] >= PING_TIMEOUT_S / 4


def test_a_run_actor_waiting_on_a_store_is_never_wedged_and_its_clock_starts_again_after(
    journal: RunJournal, store_waits: StoreWaits, release: threading.Event
) -> None:
    dog = watchdog(journal, store_waits)
    live = {1: entry(store_waits, release)}
    live[1].ref.tell(("hold", True))
    wait_until(lambda: store_waits.of(live[1].ref.actor_urn).waiting_since, 5, "the store call")
    holding_until = time.monotonic() + 4 * PING_TIMEOUT_S
    while time.monotonic() < holding_until:
        assert dog.check(live) == []  # the first ping stays unanswered all along
    release.set()
    wait_until(lambda: store_waits.of(live[1].ref.actor_urn).left_at, 5, "the call to end")
    # Busy a while after the call: the ping's clock started again when it left the call, so
    # the ping sent long before is not late yet; then it is answered, and so are the next.
    answered_until = time.monotonic() + 2 * PING_TIMEOUT_S
    while time.monotonic() < answered_until:
        assert dog.check(live) == []


def test_a_dead_run_actor_with_its_attempt_still_running_has_failed(
    database_url: str, journal: RunJournal, store_waits: StoreWaits, release: threading.Event
) -> None:
    run = claimed_run(database_url, journal)
    dead = entry(store_waits, release)
    dead.ref.stop()
    live = {run.id: dead}

    dog = watchdog(journal, store_waits)
    [finding] = wait_until(lambda: dog.check(live), 5, "a finding")

    assert finding.verdict is Verdict.FAILED and finding.entry is dead
    assert finding.run is not None and finding.run.id == run.id


def test_a_dead_run_actor_whose_attempt_ended_is_gone_after_a_grace(
    journal: RunJournal, store_waits: StoreWaits, release: threading.Event
) -> None:
    dog = watchdog(journal, store_waits)
    dead = entry(store_waits, release)
    dead.ref.stop()
    live = {424242: dead}  # no such run: ended and gone, as far as this node can tell
    first_look = time.monotonic()
    assert dog.check(live) == []

    findings: list[Finding] = wait_until(lambda: dog.check(live), 3 * DEAD_GRACE_S, "a finding")

    assert time.monotonic() - first_look > DEAD_GRACE_S
    assert [(f.run_id, f.verdict) for f in findings] == [(424242, Verdict.GONE)]
