"""This node's lease in Redis, and whether Redis has answered long enough to read another
node's missing lease as a dead node."""

from __future__ import annotations

import time

from runvisor.store.live import LiveState


class NodeLease:
    def __init__(self, live: LiveState, *, node_id: str, ttl_s: float) -> None:
        self.live = live
        self.node_id = node_id
        self.ttl_s = ttl_s
        # Since when Redis has answered our renewals without a break (None: it failed).
        self.redis_ok_since: float | None = None

    def renew(self) -> None:
        if self.live.renew_lease(self.node_id, self.ttl_s):
            if self.redis_ok_since is None:
                self.redis_ok_since = time.monotonic()
        else:
            self.redis_ok_since = None

    def settled(self) -> bool:
        """After a Redis outage every lease has lapsed: give the other nodes a whole lease time
        (and a half) to renew theirs before reading a missing lease as a dead node."""
        since = self.redis_ok_since
        return since is not None and time.monotonic() - since >= 1.5 * self.ttl_s
