"""How many more runs this node may start now: the pure part of the Supervisor's queue."""

from __future__ import annotations

CLAIM_BATCH_MAX = 64  # runs claimed in one transaction at most


def free_slots(*, max_running: int, running: int, free_uids: int | None) -> int:
    """Runs to claim now: RUNVISOR_MAX_RUNNING (0: no limit) less those running, and with
    RUNVISOR_RUN_UIDS no more than the free uids (a run never shares a uid; it waits, queued).
    At most CLAIM_BATCH_MAX."""
    free = max_running - running if max_running > 0 else CLAIM_BATCH_MAX
    if free_uids is not None:
        free = min(free, free_uids)
    return max(0, min(free, CLAIM_BATCH_MAX))
