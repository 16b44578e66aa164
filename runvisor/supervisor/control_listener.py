"""Receives control messages for this node through Redis (a stop or a drain sent by another
node)."""

from __future__ import annotations

import threading

import redis

from runvisor.logs import get_logger
from runvisor.protocol import ControlMessage, DrainRequest, StopRequest, SupervisorProxy
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
                    message = channel.next_message(timeout_s=0.5)
                    if message is not None:
                        self._deliver(message)
                channel.close()
            except redis.RedisError as exc:
                log.warning("control channel unavailable; retrying", error=str(exc))
                self._stopping.wait(RETRY_S)

    def _deliver(self, message: ControlMessage) -> None:
        # Told, not awaited: the Supervisor's answer is of no use here.
        match message:
            case StopRequest(run_id=run_id, grace_s=grace_s, requested_by=by):
                self._supervisor.stop_run(run_id, grace_s, by)
            case DrainRequest(deadline_s=deadline_s, requested_by=by):
                log.info("drain requested", by=by, deadline_s=deadline_s)
                self._supervisor.drain(deadline_s)
