"""StoreWaits: which registered threads are inside a store call, seen from another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from runvisor.store.waits import NOT_WAITING, StoreWaits
from tests.polling import wait_until


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_registered_thread_is_seen_waiting_from_its_first_call_to_the_end_of_its_last() -> None:
    waits = StoreWaits()
    inside, inner_done, leave = threading.Event(), threading.Event(), threading.Event()

    def actor() -> None:
        waits.register("actor-1")
        with waits.call():
            with waits.call():  # a call inside a call counts once
                inside.set()
            inner_done.set()
            leave.wait(10)

    before = time.monotonic()
    thread = in_thread(actor)
    wait_until(inside.is_set, 5, "the actor inside its store call")
    first = waits.of("actor-1")
    assert first.waiting_since is not None and first.waiting_since >= before
    assert first.left_at is None
    wait_until(inner_done.is_set, 5, "the inner call to end")
    assert waits.of("actor-1").waiting_since == first.waiting_since  # the outer one goes on
    leave.set()
    thread.join(5)
    after = waits.of("actor-1")
    assert after.waiting_since is None
    assert after.left_at is not None and after.left_at >= first.waiting_since


def test_unregistered_threads_and_unknown_owners_are_never_waiting() -> None:
    waits = StoreWaits()
    inside, leave = threading.Event(), threading.Event()

    def stranger() -> None:
        with waits.call():
            inside.set()
            leave.wait(10)

    thread = in_thread(stranger)
    wait_until(inside.is_set, 5, "the stranger inside its store call")
    assert waits.of("stranger") == NOT_WAITING
    leave.set()
    thread.join(5)

    def registered_then_gone() -> None:
        waits.register("actor-2")
        with waits.call():
            inside.set()
            waits.unregister("actor-2")

    inside.clear()
    in_thread(registered_then_gone).join(5)
    assert inside.is_set() and waits.of("actor-2") == NOT_WAITING


def test_a_thread_registered_again_answers_only_for_its_new_owner() -> None:
    # A thread's ident is reused once the thread has ended: the old owner must not inherit
    # the new one's store calls.
    waits = StoreWaits()
    inside, leave = threading.Event(), threading.Event()

    def actor() -> None:
        waits.register("old-actor")
        waits.register("new-actor")
        with waits.call():
            inside.set()
            leave.wait(10)

    thread = in_thread(actor)
    wait_until(inside.is_set, 5, "the actor inside its store call")
    assert waits.of("new-actor").waiting_since is not None
    assert waits.of("old-actor") == NOT_WAITING
    leave.set()
    thread.join(5)
