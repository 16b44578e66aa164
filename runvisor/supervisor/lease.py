"""This node's lease in Redis, renewed by a thread of its own, and whether Redis has answered
long enough to read another node's missing lease as a dead node."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from runvisor.logs import get_logger
from runvisor.store.live import LiveState

log = get_logger(__name__)
RENEW_EVERY_S = 1.0  # at most; TTL/3 when that is shorter


class NodeLease:
    """Renewed from its own thread, not the Supervisor's tick: a Supervisor busy in a slow
    store call must not look dead to the other nodes. Only a paused or dead process (or one that
    cannot reach Redis) lets its lease lapse."""

    def __init__(
        self,
        live: LiveState,
        *,
        node_id: str,
        ttl_s: float,
        on_lapse: Callable[[], None] = lambda: None,
    ) -> None:
        self.live = live
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.renew_every_s = min(RENEW_EVERY_S, ttl_s / 3)
        self._on_lapse = on_lapse
        # Since when Redis has answered our renewals without a break (None: it failed).
        self.redis_ok_since: float | None = None
        self.last_renewed: float | None = None  # when Redis last took a renewal
        self._held = False  # renewed at least once by this process
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runvisor-lease", daemon=True)

    def start(self) -> None:
        self.renew()
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Renew no more: the lease expires `ttl_s` after the last renewal."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.wait(self.renew_every_s):
            try:
                self.renew()
            except Exception:  # the thread must outlive anything: the node depends on it
                log.exception("lease renewal failed")

    def renew(self) -> None:
        held = self.live.renew_lease(self.node_id, self.ttl_s)
        if held is None:
            self.redis_ok_since = None
            return
        self.last_renewed = time.monotonic()
        if self.redis_ok_since is None:
            self.redis_ok_since = self.last_renewed
        if not self._held:
            self._held = True
            # A detach mark left by the previous run of this node is over: should this one
            # crash, its runs are taken over after a lease time, not a detach time.
            self.live.clear_detached(self.node_id)
        elif held is False:
            log.warning("this node's lease had expired; its runs may have been taken over")
            self._on_lapse()

    def may_have_lapsed(self) -> bool:
        """Redis has taken no renewal for a lease time: cut off from Redis, this node may have
        lost its runs to another node without knowing it yet (the Supervisor asks PostgreSQL)."""
        last = self.last_renewed
        return last is not None and time.monotonic() - last >= self.ttl_s

    def settled(self) -> bool:
        """Whether a missing lease of another node means a dead node. After a Redis outage
        (for this node or for all: then every lease lapsed), the other nodes need a lease time
        to renew theirs; so does a node that has just started and first sees Redis, since the
        outage may have just ended. One lease time: nodes renew every TTL/3 or more often."""
        since = self.redis_ok_since
        return since is not None and time.monotonic() - since >= self.ttl_s
