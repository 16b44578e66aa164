"""Receives control messages for this node through Redis (a stop sent by another node)."""

from __future__ import annotations

import threading

import redis

from runvisor.logs import get_logger
from runvisor.protocol import SupervisorProxy
from runvisor.store.live import LiveState

log = get_logger(__name__)
RETRY_S = 1.0


class ControlListener:
    def __init__(self, *, live: LiveState, node_id: str, supervisor: SupervisorProxy) -> None:
        self._live = live
        self._node_id = node_id
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
                channel = self._live.control_channel(self._node_id)
                while not self._stopping.is_set():
                    # A malformed message comes back as None (LiveState logs it): the listener
                    # never dies of what another process publishes.
                    request = channel.next_stop(timeout_s=0.5)
                    if request is not None:
                        self._supervisor.stop_run(
                            request.run_id, request.grace_s, request.requested_by
                        )
                channel.close()
            except redis.RedisError as exc:
                log.warning("control channel unavailable; retrying", error=str(exc))
                self._stopping.wait(RETRY_S)
