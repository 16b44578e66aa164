"""The node lease in a real Redis: renewed by its own thread, a lapse noticed, a missing lease
trusted only after one lease time of reaching Redis, a detach mark honoured and then cleared."""

from __future__ import annotations

import time

import redis

from runvisor.store.live import LiveState, redis_client
from runvisor.store.redis_keys import RedisKeys
from runvisor.supervisor.lease import NodeLease
from tests.fix_proxy import TcpProxy, proxied_redis_url
from tests.polling import wait_until


def test_the_lease_is_renewed_by_its_thread_and_a_lapse_is_reported(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    raw = redis.Redis.from_url(redis_server_url)
    lapses: list[float] = []
    lease = NodeLease(live, node_id="n1", ttl_s=2.0, on_lapse=lambda: lapses.append(1.0))
    try:
        assert lease.renew_every_s <= 2.0 / 3
        lease.start()
        assert raw.exists(keys.node_lease("n1")) and not lapses  # the first renewal is no lapse
        # Renewed by the thread: held past several lease times.
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            assert live.lease_held("n1") is True
            time.sleep(0.2)
        assert not lapses
        raw.delete(keys.node_lease("n1"))  # as if it had expired while the process was paused
        wait_until(lambda: lapses, 3, "the lapse to be reported")
        assert live.lease_held("n1") is True  # and set again
    finally:
        lease.stop()
        live.close()
        raw.close()


def test_a_missing_lease_is_trusted_one_lease_time_after_redis_answered(
    redis_server_url: str, redis_prefix: str
) -> None:
    live = LiveState(redis_client(redis_server_url), RedisKeys(redis_prefix))
    lease = NodeLease(live, node_id="n2", ttl_s=2.0)
    nowhere = LiveState(redis_client("redis://127.0.0.1:1/0"), RedisKeys(redis_prefix))
    cut_off = NodeLease(nowhere, node_id="n3", ttl_s=2.0)
    try:
        assert not lease.settled()  # never before Redis answered
        started = time.monotonic()
        lease.renew()
        assert not lease.settled()
        wait_until(lease.settled, 5, "one lease time")
        assert 2.0 <= time.monotonic() - started < 3.5  # one lease time, not one and a half
        cut_off.renew()
        cut_off.renew()
        assert not cut_off.settled()  # a node that cannot reach Redis never takes over
    finally:
        live.close()
        nowhere.close()


def test_a_detached_node_is_attended_until_its_mark_expires_or_it_is_back(
    redis_server_url: str, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    live = LiveState(redis_client(redis_server_url), keys)
    try:
        assert live.node_attended("n4") is False
        assert live.mark_detached("n4", 1.0)
        assert live.node_attended("n4") is True
        wait_until(lambda: live.node_attended("n4") is False, 5, "the detach mark to expire")
        assert live.mark_detached("n4", 60.0)
        back = NodeLease(live, node_id="n4", ttl_s=2.0)
        back.renew()  # the node's next start: its lease, and no detach mark left behind
        assert live.lease_held("n4") is True
        assert not redis.Redis.from_url(redis_server_url).exists(keys.node_detached("n4"))
    finally:
        live.close()


def test_a_node_cut_off_from_redis_for_a_lease_time_may_have_lost_its_lease(
    redis_server_url: str, redis_prefix: str, redis_proxy: TcpProxy
) -> None:
    url = proxied_redis_url(redis_server_url, redis_proxy)
    live = LiveState(redis_client(url), RedisKeys(redis_prefix))
    lease = NodeLease(live, node_id="n5", ttl_s=2.0)
    try:
        lease.renew()
        assert not lease.may_have_lapsed()
        redis_proxy.cut()
        lease.renew()
        assert not lease.may_have_lapsed()  # not yet a lease time
        wait_until(lease.may_have_lapsed, 5, "a lease time without a renewal")
        redis_proxy.restore()

        def renewed() -> bool:
            lease.renew()
            return not lease.may_have_lapsed()

        wait_until(renewed, 10, "Redis to take a renewal again")
    finally:
        live.close()
