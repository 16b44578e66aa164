"""Every Redis key and channel runvisor uses, built from one prefix (RUNVISOR_REDIS_PREFIX)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = "runvisor"

    def run_state(self, run_id: int) -> str:
        """Hash: the live state of a run (status, node, pid, attempt, output_bytes, updated_at)."""
        return f"{self.prefix}:run:{run_id}"

    def run_tail(self, run_id: int) -> str:
        """String: the last bytes of a run's output (capped), for a look without PostgreSQL."""
        return f"{self.prefix}:run:{run_id}:tail"

    def run_events(self, run_id: int) -> str:
        """Pub/sub channel: output and status events of one run."""
        return f"{self.prefix}:run:{run_id}:events"

    def runs_ended(self) -> str:
        """Pub/sub channel: the id of each run that has just ended (terminal), from any node."""
        return f"{self.prefix}:runs:ended"

    def node_lease(self, node_id: str) -> str:
        """String with a TTL: present while the node is alive."""
        return f"{self.prefix}:node:{node_id}:lease"

    def node_detached(self, node_id: str) -> str:
        """String with a TTL (RUNVISOR_DETACH_TTL_S): set by a node that stopped and left its
        runs running; no other node takes them over while it exists."""
        return f"{self.prefix}:node:{node_id}:detached"

    def node_control(self, node_id: str) -> str:
        """Pub/sub channel: control messages (stop, drain) to a node."""
        return f"{self.prefix}:node:{node_id}:control"

    def all_keys_pattern(self) -> str:
        return f"{self.prefix}:*"

    # Time-to-live of the per-run keys once the run has ended.
    FINISHED_RUN_TTL_S = 3600
    TAIL_BYTES = 64 * 1024
