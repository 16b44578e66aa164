"""Live state in Redis: run state hashes, the output tail, events, node leases, control messages.

Redis is a view, not the truth (PostgreSQL is): every write here is best effort, and an outage
only costs freshness. Errors are logged once per outage, not per write.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from runvisor.logs import get_logger
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits

log = get_logger(__name__)


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
    )


# Append to the tail and, once it holds twice the cap, keep only the last cap bytes: the
# amortised cost per flush is the new bytes, not the whole tail.
_APPEND_TAIL = """
local n = redis.call('APPEND', KEYS[1], ARGV[1])
local cap = tonumber(ARGV[2])
if n > 2 * cap then
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], n - cap, n - 1))
end
return n
"""


class LiveState:
    def __init__(
        self, client: redis.Redis, keys: RedisKeys, *, store_waits: StoreWaits | None = None
    ) -> None:
        self._redis = client
        self.keys = keys
        # Every write is marked there: a RunActor waiting on Redis is not a wedged one.
        self._waits = store_waits or StoreWaits()
        self._down_since: float | None = None
        self._append_tail = client.register_script(_APPEND_TAIL)

    def close(self) -> None:
        self._redis.close()

    def ping(self) -> bool:
        return self._best_effort("ping", self._redis.ping) is not None

    def publish_state(self, run_id: int, state: dict[str, Any], *, terminal: bool) -> None:
        fields: dict[FieldT, EncodableT] = {
            k: ("" if v is None else str(v)) for k, v in state.items()
        }
        fields["updated_at"] = f"{time.time():.3f}"
        key = self.keys.run_state(run_id)

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            if terminal:
                pipe.expire(key, RedisKeys.FINISHED_RUN_TTL_S)
                pipe.expire(self.keys.run_tail(run_id), RedisKeys.FINISHED_RUN_TTL_S)
            pipe.publish(self.keys.run_events(run_id), json.dumps({"type": "status", **state}))
            pipe.execute()

        self._best_effort("publish state", write)

    def publish_output(self, run_id: int, *, offset: int, data: bytes) -> None:
        """Add to the run's capped tail and announce the new bytes (ending at `offset`)."""
        cap = RedisKeys.TAIL_BYTES

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            self._append_tail(
                keys=[self.keys.run_tail(run_id)], args=[data[-cap:], cap], client=pipe
            )
            pipe.hset(self.keys.run_state(run_id), "output_bytes", str(offset))
            pipe.publish(
                self.keys.run_events(run_id),
                json.dumps({"type": "output", "offset": offset, "bytes": len(data)}),
            )
            pipe.execute()

        self._best_effort("publish output", write)

    def renew_lease(self, node_id: str, ttl_s: float) -> bool:
        return (
            self._best_effort(
                "renew lease",
                lambda: self._redis.set(
                    self.keys.node_lease(node_id), f"{time.time():.3f}", px=int(ttl_s * 1000)
                ),
            )
            is not None
        )

    def lease_held(self, node_id: str) -> bool | None:
        """Whether `node_id` holds its lease; None when Redis cannot tell (then assume nothing)."""
        try:
            return bool(self._redis.exists(self.keys.node_lease(node_id)))
        except redis.RedisError:
            return None

    def _best_effort(self, what: str, write: Any) -> Any:
        try:
            with self._waits.call():
                result = write()
        except redis.RedisError as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("redis unavailable; live state is stale", during=what, error=str(exc))
            return None
        if self._down_since is not None:
            log.info("redis is back", down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        return result if result is not None else True
