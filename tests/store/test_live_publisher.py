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

    def send(batch: list[int]) -> bool:
        sent.append(batch)
        first_sent.set()
        release.wait(5)
        return True

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

    def send(batch: list[str]) -> bool:
        release.wait(5)
        if batch == ["boom"]:
            raise RuntimeError("a bug in a write")  # not sent again: it would raise again
        sent.extend(batch)
        return True

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


def test_the_states_of_a_batch_redis_refused_go_with_the_next_its_output_does_not() -> None:
    refused: list[str] = []
    accepted: list[str] = []
    refuse = True

    def send(batch: list[str]) -> bool:
        ok = not refuse
        (accepted if ok else refused).extend(batch)
        return ok

    publisher: LivePublisher[str] = LivePublisher(send)
    try:
        publisher.put("out-1", droppable=True)
        publisher.put("state-1", droppable=False)
        wait_until(lambda: "state-1" in refused, 5, "the refused batch")
        refuse = False
        publisher.put("out-2", droppable=True)
        wait_until(lambda: "out-2" in accepted, 5, "the next batch")
        assert accepted == ["state-1", "out-2"]  # the state first, once; the output dropped
    finally:
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


def test_a_lost_script_cache_resends_the_appends_alone_and_a_restart_follows_the_output(
    redis_server_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    """A batch whose appends meet NOSCRIPT (Redis restarted, SCRIPT FLUSH): the rest of the
    pipeline went through, so only the appends are sent again: one status event, not two. A
    new attempt's restart_tail is queued after the last output of the attempt before it."""
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(proxied_redis_url(redis_server_url, redis_proxy)), keys)
    live.publish_in_background()
    raw = redis.Redis.from_url(redis_server_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        assert live.ping()
        pubsub.subscribe(keys.run_events(8))
        assert pubsub.get_message(timeout=1) is None
        redis_proxy.pause()
        live.publish_state(99, {"status": "running"}, terminal=False)  # the thread waits on it
        wait_until(lambda: live_queue_empty(live), 5, "the first write to be taken")
        live.publish_output(8, offset=3, data=b"abc")  # attempt 1's last output
        live.restart_tail(8, 3)  # attempt 2 begins at byte 3
        live.publish_output(8, offset=5, data=b"de")
        live.publish_state(8, {"status": "succeeded"}, terminal=True)
        raw.script_flush()
        redis_proxy.resume()
        wait_until(lambda: raw.hget(keys.run_state(8), "status") == b"succeeded", 10, "the end")
        wait_until(lambda: raw.get(keys.run_tail(8)) == b"de", 10, "attempt 2's tail")
        events = []
        while (message := pubsub.get_message(timeout=1)) is not None:
            events.append(parse_event(message["data"]))
        assert [e for e in events if isinstance(e, StatusEvent)] == [StatusEvent("succeeded")]
        assert [e for e in events if isinstance(e, OutputEvent)] == [
            OutputEvent(0, b"abc"),
            OutputEvent(3, b"de"),
        ]
    finally:
        redis_proxy.resume()
        pubsub.close()
        live.close()
        raw.close()


def live_queue_empty(live: LiveState) -> bool:
    publisher = live._publisher
    return publisher is not None and publisher.queued() == 0
