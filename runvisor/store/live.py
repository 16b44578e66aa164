"""Live state in Redis: run state hashes, the output tail, events, node leases, control messages.

Redis is a view, not the truth (PostgreSQL is): every write here is best effort, and an outage
only costs freshness. Errors are logged once per outage, not per write.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline, PubSub
from redis.typing import EncodableT, FieldT

from runvisor import metrics
from runvisor.logs import get_logger
from runvisor.protocol import ControlMessage, StopRequest, parse_control_message
from runvisor.store.live_publisher import LivePublisher
from runvisor.store.redis_keys import RedisKeys
from runvisor.store.waits import StoreWaits

log = get_logger(__name__)


def redis_client(url: str) -> redis.Redis:
    # The node's threads share one pool. A caller waits (up to 2 s) for a free connection
    # rather than fail: redis-py's default pool refuses a 101st connection ("Too many
    # connections"), which a thousand RunActors publishing at once reach.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=2.0,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=10,
    )
    return redis.Redis(connection_pool=pool)


# A run's new output, from the pump (after PostgreSQL committed it) and from the live relay
# (as soon as it is in the spool, before): whichever comes first appends it to the tail and
# publishes it; bytes below `tail_end` (the tail's end offset, in the state hash) were published
# already and are skipped, so the tail stays contiguous and each byte is published once. A gap
# (Redis lost the tail, or bytes beyond the cap) starts the tail afresh. Once the tail holds
# twice the cap, only the last cap bytes are kept: the amortised cost is the new bytes.
# The message is one JSON line, then the raw bytes (live_events.parse_event).
# KEYS: tail, state hash. ARGV: data (its last cap bytes), end offset, cap, stored offset or '',
# channel.
_APPEND_TAIL = """
local data, stop, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'output_bytes', ARGV[4]) end
local tail_end = tonumber(redis.call('HGET', KEYS[2], 'tail_end') or '-1')
if tail_end >= stop then return 0 end
local start = stop - #data
local fresh = data
if tail_end >= start then
  fresh = string.sub(data, tail_end - start + 1)
  local n = redis.call('APPEND', KEYS[1], fresh)
  if n > 2 * cap then
    redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], n - cap, n - 1), 'KEEPTTL')
  end
else
  redis.call('SET', KEYS[1], fresh, 'KEEPTTL')
end
redis.call('HSET', KEYS[2], 'tail_end', string.format('%d', stop))
local header = string.format('{"type": "output", "start": %d, "offset": %d, "bytes": %d}',
  stop - #fresh, stop, #fresh)
redis.call('PUBLISH', ARGV[5], header .. '\\n' .. fresh)
return #fresh
"""


# A new attempt's tail: empty, ending at ARGV[1]. KEYS: tail, state hash.
_RESTART_TAIL = """
redis.call('SET', KEYS[1], '', 'KEEPTTL')
redis.call('HSET', KEYS[2], 'tail_end', ARGV[1])
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
        self._restart_tail = client.register_script(_RESTART_TAIL)
        self._publisher: LivePublisher[Callable[[Pipeline], None]] | None = None

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()  # what is queued is sent first
        self._redis.close()

    def with_own_connection(self) -> LiveState:
        """The same live state over a connection of its own: a thread that must keep its pace
        (the live relay) never waits for the shared pool, which a busy node may exhaust."""
        shared = self._redis.connection_pool
        # The class too: a unix socket (the embedded Valkey) takes `path`, which TCP refuses.
        pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=1,
            timeout=2.0,
            connection_class=shared.connection_class,
            **shared.connection_kwargs,
        )
        return LiveState(redis.Redis(connection_pool=pool), self.keys, store_waits=self._waits)

    def ping(self) -> bool:
        return self._best_effort("ping", self._redis.ping) is not None

    def publish_in_background(self) -> None:
        """From now on publish_state and the stored output of publish_output(s) are queued for
        one thread, which sends what queued meanwhile in one round trip (live_publisher)."""
        if self._publisher is None:
            # Loaded ahead, so that the first writes find them (a miss costs a second send).
            self._best_effort("load the tail scripts", self._load_scripts)
            self._publisher = LivePublisher(self._send)

    def publish_state(self, run_id: int, state: dict[str, Any], *, terminal: bool) -> None:
        fields: dict[FieldT, EncodableT] = {
            k: ("" if v is None else str(v)) for k, v in state.items()
        }
        fields["updated_at"] = f"{time.time():.3f}"
        key = self.keys.run_state(run_id)
        event = json.dumps({"type": "status", **state})

        def add(pipe: Pipeline) -> None:
            pipe.hset(key, mapping=fields)
            if terminal:
                pipe.expire(key, RedisKeys.FINISHED_RUN_TTL_S)
                pipe.expire(self.keys.run_tail(run_id), RedisKeys.FINISHED_RUN_TTL_S)
            pipe.publish(self.keys.run_events(run_id), event)
            if terminal:  # wakes the requests waiting for this run's end, on every node
                pipe.publish(self.keys.runs_ended(), str(run_id))

        self._publish(add, droppable=False)

    def publish_output(self, run_id: int, *, offset: int, data: bytes, stored: bool = True) -> None:
        """Add to the run's capped tail and publish the bytes not published yet (`data` ends at
        `offset`). `stored`: PostgreSQL has committed them (the state's `output_bytes`)."""
        self.publish_outputs([(run_id, offset, data)], stored=stored)

    def publish_outputs(self, pieces: list[tuple[int, int, bytes]], *, stored: bool) -> None:
        """publish_output for many runs (run id, end offset, data) in one round trip."""
        cap = RedisKeys.TAIL_BYTES
        adds: list[Callable[[Pipeline], None]] = [
            functools.partial(self._append_piece, run_id, offset, data[-cap:], stored)
            for run_id, offset, data in pieces
        ]
        if self._publisher is not None and stored:
            for add in adds:
                self._publisher.put(add, droppable=True)
        elif adds:
            self._send(adds)

    def _publish(self, add: Callable[[Pipeline], None], *, droppable: bool) -> None:
        if self._publisher is not None:
            self._publisher.put(add, droppable=droppable)
        else:
            self._send([add])

    def _append_piece(
        self, run_id: int, offset: int, data: bytes, stored: bool, pipe: Pipeline
    ) -> None:
        # EVALSHA, not redis-py's Script: in a pipeline that asks SCRIPT EXISTS first, a second
        # round trip on every publish (a sixth of a busy node's time).
        keys = [self.keys.run_tail(run_id), self.keys.run_state(run_id)]
        stored_at = str(offset) if stored else ""
        args: list[EncodableT] = [
            data, offset, RedisKeys.TAIL_BYTES, stored_at, self.keys.run_events(run_id)
        ]  # fmt: skip
        pipe.evalsha(self._append_tail.sha, len(keys), *keys, *args)

    def _load_scripts(self) -> None:
        for script in (_APPEND_TAIL, _RESTART_TAIL):
            self._redis.script_load(script)

    def _send(self, writes: list[Callable[[Pipeline], None]]) -> bool:
        """The writes, in order, in one pipelined round trip (best effort); False if Redis
        could not take them."""

        def execute(these: list[Callable[[Pipeline], None]]) -> None:
            pipe = self._redis.pipeline(transaction=False)
            for add in these:
                add(pipe)
            pipe.execute()

        def write() -> None:
            try:
                execute(writes)
            except redis.exceptions.NoScriptError:
                # Redis lost its scripts (a restart, SCRIPT FLUSH): the rest of the pipeline
                # went through; load them and send again the scripts' writes alone, in order.
                self._load_scripts()
                scripted = (self._append_piece, self._restart_piece)
                execute([w for w in writes if getattr(w, "func", None) in scripted])

        return self._best_effort("publish live state", write) is not None

    def followed_runs(self, run_ids: list[int]) -> set[int] | None:
        """Those of `run_ids` whose events channel has a subscriber (a live stream on some
        node); None when Redis cannot say."""
        if not run_ids:
            return set()
        channels = [self.keys.run_events(run_id) for run_id in run_ids]
        counts = self._best_effort("ask who follows", lambda: self._redis.pubsub_numsub(*channels))
        if not isinstance(counts, list):
            return None
        return {run_id for run_id, (_, n) in zip(run_ids, counts, strict=True) if n}

    def restart_tail(self, run_id: int, offset: int) -> None:
        """A new attempt writes from `offset` on: the tail is empty and ends there. Queued like
        the output (after the last of the attempt before it), in one script (atomic: the live
        relay's appends never fall between its two writes)."""
        self._publish(functools.partial(self._restart_piece, run_id, offset), droppable=False)

    def _restart_piece(self, run_id: int, offset: int, pipe: Pipeline) -> None:
        keys = [self.keys.run_tail(run_id), self.keys.run_state(run_id)]
        pipe.evalsha(self._restart_tail.sha, len(keys), *keys, str(offset))

    def renew_lease(self, node_id: str, ttl_s: float) -> bool | None:
        """Renew this node's lease: True if it was still held, False if it had expired (and
        is now set again), None when Redis did not answer."""
        key = self.keys.node_lease(node_id)
        value, ttl_ms = f"{time.time():.3f}", int(ttl_s * 1000)

        def renew() -> bool:
            if self._redis.set(key, value, px=ttl_ms, xx=True):
                return True
            self._redis.set(key, value, px=ttl_ms)
            return False

        held: bool | None = self._best_effort("renew lease", renew)
        return held

    def lease_held(self, node_id: str) -> bool | None:
        """Whether `node_id` holds its lease; None when Redis cannot tell (then assume nothing)."""
        try:
            return bool(self._redis.exists(self.keys.node_lease(node_id)))
        except redis.RedisError:
            return None

    def node_attended(self, node_id: str) -> bool | None:
        """Whether `node_id` holds its lease or detached within its detach TTL (its runs go on
        unattended until then); None when Redis cannot tell (then assume nothing)."""
        keys = (self.keys.node_lease(node_id), self.keys.node_detached(node_id))
        try:
            return bool(self._redis.exists(*keys))
        except redis.RedisError:
            return None

    def mark_detached(self, node_id: str, ttl_s: float) -> bool:
        """A node stops and leaves its runs running: none is taken over for `ttl_s`."""
        key, until = self.keys.node_detached(node_id), f"{time.time() + ttl_s:.3f}"
        return (
            self._best_effort(
                "mark detached", lambda: self._redis.set(key, until, px=int(ttl_s * 1000))
            )
            is not None
        )

    def clear_detached(self, node_id: str) -> bool:
        """The node is back: a later crash must not leave its runs unattended for a detach TTL."""
        key = self.keys.node_detached(node_id)
        return self._best_effort("clear detached", lambda: self._redis.delete(key)) is not None

    def send_stop(self, node_id: str, request: StopRequest) -> bool:
        """Publish a stop on the control channel of `node_id`, which owns the run. False when
        Redis did not take it: the stop is recorded in PostgreSQL, where the owner finds it."""
        return self.send_control(node_id, request)

    def send_control(self, node_id: str, message: ControlMessage) -> bool:
        """Publish a control message on the channel of `node_id`. False when Redis did not take
        it (every message is recorded in PostgreSQL first, where the node finds it)."""
        channel = self.keys.node_control(node_id)
        return (
            self._best_effort(
                "send control", lambda: self._redis.publish(channel, message.to_json())
            )
            is not None
        )

    def control_channel(self, node_id: str) -> ControlChannel:
        """Subscribe to the control channel of `node_id` (this node). Raises redis.RedisError."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8
        try:
            pubsub.subscribe(self.keys.node_control(node_id))
        except redis.RedisError:
            pubsub.close()
            raise
        return ControlChannel(pubsub)

    def _best_effort(self, what: str, write: Any) -> Any:
        try:
            with self._waits.call():
                result = write()
        except redis.RedisError as exc:
            metrics.store_reachable("redis", False)
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("redis unavailable; live state is stale", during=what, error=str(exc))
            return None
        metrics.store_reachable("redis", True)
        if self._down_since is not None:
            log.info("redis is back", down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        return result if result is not None else True


class ControlChannel:
    """A node's subscription to its control channel: the stops and drains other nodes send."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    def next_message(self, timeout_s: float) -> ControlMessage | None:
        """The next control message, waiting at most `timeout_s`; None if none came. A
        malformed message is logged and ignored. Raises redis.RedisError when the connection
        fails."""
        message = self._pubsub.get_message(timeout=timeout_s)
        if message is None:
            return None
        raw = message["data"]
        try:
            return parse_control_message(raw)
        except ValueError as exc:
            log.warning("ignored a malformed control message", raw=raw[:200], error=str(exc))
            return None

    def close(self) -> None:
        self._pubsub.close()
