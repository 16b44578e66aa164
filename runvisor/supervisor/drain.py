"""A draining node: it claims nothing more, lets its runs finish, and past the drain's deadline
stops what remains (attempt reason `drained`), so that the restart policy restarts them on
another node. The Supervisor holds one `Drain` while the node drains; a restart of the service
starts without one (the node is `up` again)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Drain:
    deadline: float | None  # time.monotonic() after which what runs is stopped; None: never
    evicted: set[tuple[int, int]] = field(default_factory=set)  # (run id, attempt) told Evict

    @classmethod
    def within(cls, deadline_s: float | None) -> Drain:
        return cls(None if deadline_s is None else time.monotonic() + max(deadline_s, 0.0))

    def update(self, deadline_s: float | None) -> None:
        """A later request (or the one read back from PostgreSQL) sets the deadline it says."""
        self.deadline = None if deadline_s is None else time.monotonic() + max(deadline_s, 0.0)

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline
