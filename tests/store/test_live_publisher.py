"""The live writes of RunActors sent by one thread (LiveState.publish_in_background): queued
without waiting, in order, batched, bounded; against a real Redis, paused through a proxy."""

from __future__ import annotations

import threading
import time

import redis

from runvisor.store.live import LiveState, redis_client
from runvisor.store.live_events import OutputEvent, StatusEvent, parse_event
from runvisor.store.live_publisher import LivePublisher
from runvisor.store.redis_keys import RedisKeys
from tests.fix_proxy import TcpProxy, proxied_redis_url
from tests.polling import wait_until


def test_writes_queued_meanwhile_go_in_one_batch_in_order() -> None:
    sent: list[list[int]] = []
    first_sent, release = threading.Event(), threading.Event()

    def send(batch: list[int]) -> None:
        sent.append(batch)
        first_sent.set()
        release.wait(5)

    publisher: LivePublisher[int] = LivePublisher(send)
    try:
        publisher.put(0, droppable=False)
        wait_until(first_sent.is_set, 5, "the first batch")
        for i in range(1, 301):
            publisher.put(i, droppable=True)
        release.set()
        wait_until(lambda: sum(map(len, sent)) == 301, 5, "every write sent")
        assert sent == [[0], list(range(1, 301))]
    finally:
        release.set()
        publisher.close()


def test_output_beyond_the_bound_is_dropped_a_state_never_and_a_failing_send_is_survived() -> None:
    sent: list[str] = []
    release = threading.Event()

    def send(batch: list[str]) -> None:
        release.wait(5)
        if batch == ["boom"]:
            raise RuntimeError("a bug in a write")
        sent.extend(batch)

    publisher: LivePublisher[str] = LivePublisher(send, max_queued=3)
    try:
        publisher.put("boom", droppable=False)  # taken by the thread, waits in send
        wait_until(lambda: publisher.queued() == 0, 5, "the thread to take it")
        for name in ("o1", "o2", "o3", "o4", "o5"):
            publisher.put(name, droppable=True)
        publisher.put("state", droppable=False)
        assert publisher.dropped == 2
        release.set()
        wait_until(lambda: len(sent) == 4, 5, "the rest sent after the failed batch")
        assert sent == ["o1", "o2", "o3", "state"]
    finally:
        release.set()
        publisher.close()


def test_an_actor_does_not_wait_for_a_paused_redis_and_its_end_follows_its_output(
    redis_server_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(proxied_redis_url(redis_server_url, redis_proxy)), keys)
    live.publish_in_background()
    raw = redis.Redis.from_url(redis_server_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        assert live.ping()  # connected before the pause
        pubsub.subscribe(keys.run_events(8))
        assert pubsub.get_message(timeout=1) is None
        redis_proxy.pause()
        started = time.monotonic()
        for end in range(1, 51):
            live.publish_output(8, offset=end, data=b"x")
        live.publish_state(8, {"status": "succeeded"}, terminal=True)
        assert time.monotonic() - started < 0.5  # queued, not sent: Redis does not answer
        redis_proxy.resume()
        wait_until(lambda: raw.hget(keys.run_state(8), "status") == b"succeeded", 10, "the end")
        assert raw.get(keys.run_tail(8)) == b"x" * 50
        events = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            events.append(parse_event(message["data"]))
        assert isinstance(events[-1], StatusEvent) and events[-1].status == "succeeded"
        assert b"".join(e.data for e in events if isinstance(e, OutputEvent)) == b"x" * 50
    finally:
        redis_proxy.resume()
        pubsub.close()
        live.close()
        raw.close()
