"""Live state in a real Redis: the capped tail, state hashes, events; and an outage is survived."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import redis
from redis import asyncio as aioredis
from structlog.testing import capture_logs

from runvisor.protocol import StopRequest
from runvisor.store.live import LiveState, redis_client
from runvisor.store.live_events import OutputEvent, StatusEvent, parse_event, read_tail
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits
from tests.fix_metrics import scrape_in_process, value
from tests.fix_proxy import TcpProxy, proxied_redis_url
from tests.polling import wait_until


def test_the_tail_keeps_the_last_bytes_within_twice_the_cap(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url)
    try:
        written = bytearray()
        for i in range(300):
            piece = (f"{i:05d}-" * 100).encode()  # 600 bytes
            written += piece
            live.publish_output(7, offset=len(written), data=piece)
            tail = raw.get(keys.run_tail(7))
            assert tail is not None and written.endswith(tail)
            assert len(tail) <= 2 * RedisKeys.TAIL_BYTES
            assert len(tail) >= min(len(written), RedisKeys.TAIL_BYTES)
        assert raw.hget(keys.run_state(7), "output_bytes") == str(len(written)).encode()
    finally:
        live.close()
        raw.close()


def test_state_is_published_and_announced(redis_server_url: str, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(keys.run_events(9))
        assert pubsub.get_message(timeout=1) is None
        live.publish_state(9, {"status": "succeeded", "pid": None}, terminal=True)
        state = raw.hgetall(keys.run_state(9))
        assert state[b"status"] == b"succeeded" and state[b"pid"] == b""
        assert 0 < raw.ttl(keys.run_state(9)) <= RedisKeys.FINISHED_RUN_TTL_S
        message = pubsub.get_message(timeout=2)
        assert message is not None and json.loads(message["data"])["status"] == "succeeded"
    finally:
        pubsub.close()
        live.close()
        raw.close()


def test_an_unreachable_redis_costs_freshness_not_an_exception() -> None:
    live = LiveState(redis_client("redis://127.0.0.1:1/0"), RedisKeys("nowhere"))
    live.publish_output(1, offset=3, data=b"abc")
    live.publish_state(1, {"status": "running"}, terminal=False)
    live.renew_lease("n", 5)
    assert live.ping() is False
    live.close()


def test_a_write_to_a_paused_redis_is_a_store_wait_until_it_returns(
    redis_server_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    waits = StoreWaits()
    url = proxied_redis_url(redis_server_url, redis_proxy)
    live = LiveState(redis_client(url), RedisKeys(redis_prefix), store_waits=waits)
    done = threading.Event()

    def writer() -> None:
        waits.register("writer")
        live.publish_state(3, {"status": "running"}, terminal=False)
        done.set()

    try:
        assert live.ping()  # connected before the pause
        redis_proxy.pause()
        threading.Thread(target=writer, daemon=True).start()
        since = wait_until(lambda: waits.of("writer").waiting_since, 5, "the writer to wait")
        redis_proxy.resume()
        wait_until(done.is_set, 10, "the write to return")
        after = waits.of("writer")
        assert after.waiting_since is None and after.left_at is not None and after.left_at > since
    finally:
        redis_proxy.resume()
        live.close()


def test_a_stop_sent_through_live_state_is_read_at_the_other_end(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    sender = LiveState(redis_client(redis_server_url), keys)
    receiver = LiveState(redis_client(redis_server_url), keys)
    channel = receiver.control_channel("node-a")
    try:
        assert channel.next_message(timeout_s=0.2) is None  # nothing sent yet
        request = StopRequest(run_id=5, grace_s=1.5, requested_by="operator:0123abcd")
        assert sender.send_stop("node-a", request)
        assert sender.send_stop("node-b", StopRequest(6, 0.0, "admin:x"))  # another node's
        received = wait_until(lambda: channel.next_message(timeout_s=0.5), 5, "the stop")
        assert received == request
        assert channel.next_message(timeout_s=0.3) is None  # node-b's stop is not node-a's
    finally:
        channel.close()
        sender.close()
        receiver.close()


def test_a_malformed_control_message_is_logged_and_ignored(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url)
    channel = live.control_channel("node-a")
    garbage = [b"[1]", b"5", b"\xff", b'{"type": "stop", "run_id": "x", "grace_s": 1, "by": "a"}']
    try:
        with capture_logs() as logs:
            for message in garbage:
                raw.publish(keys.node_control("node-a"), message)
            raw.publish(keys.node_control("node-a"), StopRequest(8, 2.0, "admin:y").to_json())
            # None for each ignored message (and for the subscription's confirmation).
            received = wait_until(lambda: channel.next_message(timeout_s=0.5), 5, "the good stop")
        assert received == StopRequest(8, 2.0, "admin:y")
        ignored = [e for e in logs if e["event"] == "ignored a malformed control message"]
        assert [e["raw"] for e in ignored] == garbage
        assert all(e["log_level"] == "warning" and e["error"] for e in ignored)
    finally:
        channel.close()
        live.close()
        raw.close()


def test_a_stop_redis_does_not_take_is_reported_not_raised() -> None:
    live = LiveState(redis_client("redis://127.0.0.1:1/0"), RedisKeys("nowhere"))
    try:
        assert live.send_stop("node-a", StopRequest(1, 1.0, "admin:x")) is False
        with pytest.raises(redis.RedisError):
            live.control_channel("node-a")  # the listener retries on this
    finally:
        live.close()


def test_redis_reachability_is_what_the_last_call_found(
    redis_server_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    live = LiveState(
        redis_client(proxied_redis_url(redis_server_url, redis_proxy)), RedisKeys(redis_prefix)
    )
    up = {"store": "redis"}
    try:
        assert live.renew_lease("n", 5) is not None  # False: set anew (it had no lease)
        assert live.renew_lease("n", 5) is True  # renewed
        assert value(scrape_in_process(), "runvisor_store_up", up) == 1
        redis_proxy.cut()
        assert live.renew_lease("n", 5) is None  # Redis did not answer
        assert value(scrape_in_process(), "runvisor_store_up", up) == 0
        redis_proxy.restore()
        wait_until(lambda: live.renew_lease("n", 5) is not None, 10, "Redis to answer again")
        assert value(scrape_in_process(), "runvisor_store_up", up) == 1
    finally:
        live.close()


def test_output_published_early_is_not_published_again_and_carries_its_offsets(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(keys.run_events(4))
        assert pubsub.get_message(timeout=1) is None
        live.publish_outputs([(4, 5, b"hello")], stored=False)  # the relay, before the commit
        live.publish_output(4, offset=8, data=b"hello, w"[2:])  # the pump: [2, 8) stored
        live.publish_output(4, offset=8, data=b"llo, w")  # again: nothing new
        live.publish_outputs([(4, 20, b"after a gap")], stored=False)
        messages = [pubsub.get_message(timeout=2) for _ in range(3)]
        events = [parse_event(m["data"]) for m in messages if m is not None]
        assert events == [
            OutputEvent(0, b"hello"),
            OutputEvent(5, b", w"),
            OutputEvent(9, b"after a gap"),
        ]
        assert pubsub.get_message(timeout=0.3) is None  # the repeat published nothing
        assert raw.hget(keys.run_state(4), "output_bytes") == b"8"  # what the pump stored
        # A gap starts the tail afresh.
        assert _tail(redis_server_url, keys, 4) == OutputEvent(9, b"after a gap")
    finally:
        pubsub.close()
        live.close()
        raw.close()


def _tail(url: str, keys: RedisKeys, run_id: int) -> OutputEvent | None:
    async def read() -> OutputEvent | None:
        client = aioredis.Redis.from_url(url)
        try:
            return await read_tail(client, keys, run_id)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_events_that_are_not_understood_are_none() -> None:
    assert parse_event(b'{"type": "status", "status": "running"}') == StatusEvent("running")
    assert parse_event(b'{"type": "output", "start": 3, "offset": 5, "bytes": 2}\nab') == (
        OutputEvent(3, b"ab")
    )
    for bad in [
        b"",
        b"\xff",
        b"[1]",
        b'{"type": "output", "start": 3, "offset": 5, "bytes": 3}\nab',  # not 3 bytes
        b'{"type": "output", "start": -1, "offset": 1, "bytes": 2}\nab',
        b'{"type": "output", "start": 0, "offset": 2, "bytes": 2}',  # no data line
        b'{"type": "status"}',
    ]:
        assert parse_event(bad) is None, bad


def test_a_connection_of_its_own_keeps_a_unix_socket_url() -> None:
    """The live relay's own connection copies the shared pool's connection class: over a unix
    socket (the embedded Valkey) a TCP connection given `path` raised TypeError and killed the
    relay, leaving live streams at the flush's pace. No server here: down is a clean False."""
    shared = LiveState(redis_client("unix:///nonexistent/runvisor.sock"), RedisKeys("rv-test"))
    own = shared.with_own_connection()
    try:
        assert own.ping() is False  # ConnectionError, caught as an outage; not a TypeError
    finally:
        own.close()
        shared.close()


def _calls(raw: redis.Redis, command: str) -> int:
    stats = raw.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def test_output_is_published_in_one_round_trip_even_after_redis_lost_its_scripts(
    redis_server_url: str, redis_prefix: str
) -> None:
    """EVALSHA in a plain pipeline: no SCRIPT EXISTS before each publish (redis-py's Script
    in a pipeline asks it every time); a script cache Redis lost is loaded again."""
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url, decode_responses=True)
    try:
        live.publish_output(3, offset=2, data=b"ab")  # the script is loaded from here on
        exists_before = _calls(raw, "script|exists")
        for end in range(3, 23):
            live.publish_output(3, offset=end, data=b"x")
        assert _calls(raw, "script|exists") == exists_before
        raw.script_flush()  # as a restarted Redis: no scripts
        live.publish_output(3, offset=24, data=b"yz")
        assert raw.get(keys.run_tail(3)) == "ab" + "x" * 20 + "yz"
        assert raw.hget(keys.run_state(3), "output_bytes") == "24"
    finally:
        live.close()
        raw.close()
