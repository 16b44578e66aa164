"""This node in the fleet's table: registered at start, `seen_at` refreshed every second (as
often as the lease), and every few seconds the queued runs' `queued_reason` brought up to
date (why no node that is up may take them).

A thread of its own: a PostgreSQL that is down or slow holds this thread only, never the
Supervisor, its lease renewals or the runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.store.live import LiveState
from runvisor.store.nodes import NodeRegistry

log = get_logger("runvisor.nodes")

BEAT_S = 1.0  # as often as the Supervisor renews the lease (actor.TICK_S)
REASONS_EVERY_S = 3.0


class NodePresence:
    def __init__(
        self,
        *,
        registry: NodeRegistry,
        live: LiveState,
        node_id: str,
        labels: Mapping[str, str],
        version: str,
        capacity: int,
        mechanism: str,
        beat_s: float = BEAT_S,
        reasons_every_s: float = REASONS_EVERY_S,
    ) -> None:
        self.registry = registry
        self.live = live
        self.node_id = node_id
        self.labels = dict(labels)
        self.version = version
        self.capacity = capacity
        self.mechanism = mechanism
        self.beat_s = beat_s
        self.reasons_every_s = reasons_every_s
        self.registered = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-nodes", daemon=True)
        self._next_reasons = 0.0
        self._store_down = False  # logged once per outage, not per beat

    def start(self) -> None:
        try:
            self.beat()  # registered before the node answers, when PostgreSQL is up
        finally:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def beat(self) -> None:
        """Register (again) if needed, else refresh `seen_at`; now and then the reasons."""
        try:
            if self.registered:
                # False: the row is gone (a database restored, a row deleted): register again.
                self.registered = self.registry.heartbeat(self.node_id)
            if not self.registered:
                self._register()
            if time.monotonic() >= self._next_reasons:
                self._next_reasons = time.monotonic() + self.reasons_every_s
                nodes = self.registry.views(self.live.lease_held)
                self.registry.refresh_queued_reasons(nodes)
        except StoreUnavailable as exc:
            if not self._store_down:
                log.warning("node heartbeat waits for PostgreSQL", error=exc.message)
            self._store_down = True
            return
        if self._store_down:
            log.info("node heartbeat resumed")
        self._store_down = False

    def _register(self) -> None:
        self.registry.register(
            self.node_id,
            labels=self.labels,
            version=self.version,
            capacity=self.capacity,
            mechanism=self.mechanism,
        )
        self.registered = True
        log.info("node registered", node=self.node_id, labels=self.labels)

    def _loop(self) -> None:
        while not self._stopping.wait(self.beat_s):
            try:
                self.beat()
            except Exception:  # never let the thread die: the next beat tries again
                log.exception("node heartbeat failed")
