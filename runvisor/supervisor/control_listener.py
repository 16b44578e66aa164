"""Receives control messages for this node through Redis (a stop sent by another node)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pykka
import redis

from runvisor.logs import get_logger
from runvisor.store.redis_keys import RedisKeys

log = get_logger(__name__)
RETRY_S = 1.0


class ControlListener:
    def __init__(
        self,
        *,
        client: redis.Redis,
        keys: RedisKeys,
        node_id: str,
        supervisor: pykka.ActorProxy[Any],
    ) -> None:
        self._client = client
        self._channel = keys.node_control(node_id)
        self._supervisor = supervisor
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self._channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._handle(message["data"])
                pubsub.close()
            except redis.RedisError as exc:
                log.warning("control channel unavailable; retrying", error=str(exc))
                self._stopping.wait(RETRY_S)

    def _handle(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            if message.get("type") == "stop":
                self._supervisor.stop_run(
                    int(message["run_id"]), float(message["grace_s"]), str(message["by"])
                )
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed control message", raw=raw[:200])
