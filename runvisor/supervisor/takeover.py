"""Takeover: the runs of a node whose lease expired (and that did not detach) move to this node.

Checked every Supervisor tick (a second): a dead node's runs are ended `lost` and restarted by
policy within the lease TTL and a second or two. Never on a guess: only while this node's own
Redis has answered for a lease time (`NodeLease.settled`), and only for a node Redis says has
neither a lease nor a detach mark; PostgreSQL must not say it detached either.
"""

from __future__ import annotations

from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Run
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.supervisor.lease import NodeLease

log = get_logger("runvisor.supervisor")


def take_over_dead_nodes(
    *, journal: RunJournal, live: LiveState, lease: NodeLease
) -> list[tuple[str, Run]]:
    """Move the active runs of every dead node to this node: (dead node, run) for each run
    moved, with its attempts. The caller ends the running attempts `lost` and restarts the
    restarting runs."""
    if not lease.settled():
        return []
    try:
        nodes = journal.nodes_with_active_runs()
    except StoreUnavailable:
        return []
    taken: list[tuple[str, Run]] = []
    for node in nodes:
        if live.node_attended(node) is not False:
            continue  # alive, detached for a while, or Redis cannot tell: never on a guess
        try:
            runs = journal.take_over_runs(node)
        except StoreUnavailable:
            break
        log.warning(
            "took over the runs of a node whose lease expired",
            node=node,
            runs=[r.id for r in runs],
        )
        taken.extend((node, run) for run in runs)
    return taken
