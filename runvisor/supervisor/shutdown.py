"""What a graceful stop of the service does with its runs (RUNVISOR_ON_SHUTDOWN).

`detach` (the default): the runs go on; the node records in Redis (and in its `nodes` row) how
long they may go unattended (RUNVISOR_DETACH_TTL_S), so that no other node takes them over
before that: a restart or a deploy within that time adopts them, nothing runs twice.

`drain`: the node claims nothing more, waits for its runs to finish, stops what still runs after
RUNVISOR_DRAIN_TIMEOUT_S (attempt reason `drained`: the policy restarts them on another node)
and hands the runs due to restart to the queue; then it stops as `stopped`.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import pykka

from runvisor.actors.deps import RunDeps
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.protocol import SupervisorProxy
from runvisor.store.nodes import NodeState

log = get_logger(__name__)
POLL_S = 0.2
ASK_TIMEOUT_S = 10.0


def drain_before_exit(supervisor: SupervisorProxy, *, timeout_s: float, grace_s: float) -> bool:
    """Drain and wait until this node holds no run (the deadline, the runs' grace and a margin
    at most). True if it emptied."""
    try:
        left = supervisor.drain(timeout_s).get(timeout=ASK_TIMEOUT_S)
        log.info("draining before exit", runs=left, deadline_s=timeout_s)
        give_up = time.monotonic() + timeout_s + grace_s + 10.0
        while left and time.monotonic() < give_up:
            time.sleep(POLL_S)
            left = supervisor.active_count().get(timeout=ASK_TIMEOUT_S)
    except (pykka.ActorDeadError, pykka.Timeout):
        return False
    if left:
        log.warning("drain did not finish before exit; the rest is detached", runs=left)
    return not left


def record_shutdown(deps: RunDeps, *, detached: bool, detach_ttl_s: float) -> None:
    """Say what this node left behind: `detached` (its runs go on, not to be taken over for
    `detach_ttl_s`) or `stopped` (it holds nothing). Best effort: Redis or PostgreSQL down
    costs the record, not the shutdown."""
    node_id = deps.journal.node_id
    until = datetime.now(UTC) + timedelta(seconds=detach_ttl_s)
    if detached:
        if detach_ttl_s > 0:
            deps.live.mark_detached(node_id, detach_ttl_s)
        log.info("detached: runs go on unattended", until=until.isoformat())
    with contextlib.suppress(StoreUnavailable):
        if detached:
            deps.journal.nodes.set_state(node_id, NodeState.DETACHED, detached_until=until)
        else:
            deps.journal.nodes.set_state(node_id, NodeState.STOPPED)
