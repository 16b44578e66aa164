"""RunControl: what the HTTP layer asks of the running service (start and stop runs).

It bridges asyncio to the actors without blocking the event loop: a pykka future is waited on
in a worker thread with a timeout (awaiting it directly would block the loop).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import psycopg
import pykka

from runvisor import metrics
from runvisor.errors import Conflict, NotFound, ServiceUnavailable, StoreUnavailable
from runvisor.http.fleet import NodeLeases, read_fleet
from runvisor.logs import get_logger
from runvisor.models import Run, RunSpec, RunStatus
from runvisor.placement import Placement, unmet_reason
from runvisor.protocol import DrainRequest, RunsQueued, StopRequest, SupervisorProxy
from runvisor.store.history import History
from runvisor.store.live import LiveState

ASK_TIMEOUT_S = 10.0
log = get_logger(__name__)
T = TypeVar("T")


class RunControl:
    def __init__(
        self,
        *,
        history: History,
        supervisor: SupervisorProxy,
        live: LiveState,
        node_id: str,
        default_grace_s: float,
        leases: NodeLeases | None = None,
    ) -> None:
        self.history = history
        self.supervisor = supervisor
        self.live = live
        self.leases = leases
        self.node_id = node_id
        self.default_grace_s = default_grace_s

    async def start_run(self, command_id: int, spec: RunSpec, *, actor: str) -> Run:
        """Create the run (queued, committed: durable), tell the Supervisor, and answer at
        once: the claim and the spawn happen right after, not while the client waits. Should
        the message be lost, the Supervisor's tick finds the run in the queue."""
        run = await self.history.create_run(command_id, spec, actor=actor)
        await self._say_why_it_waits(run)
        try:
            self.supervisor.actor_ref.tell(RunsQueued())
        except pykka.ActorDeadError:
            # Shutting down: the run stays queued for this node's next start, or another node.
            log.warning("run left queued: the supervisor is stopping", run_id=run.id)
        return run

    async def _say_why_it_waits(self, run: Run) -> None:
        """A run no node that is up may take says so from the start (the nodes' presence
        threads keep the reason up to date after that, and the claim clears it)."""
        placement = Placement(run.place_node, run.place_labels)
        if self.leases is None or not placement.pinned:
            return  # any node may take it
        try:
            fleet = await read_fleet(self.history, self.leases)
            reason = unmet_reason(placement, [node.view for node in fleet])
            if reason is not None and await self.history.nodes.set_queued_reason(run.id, reason):
                run.queued_reason = reason
        except (StoreUnavailable, psycopg.Error) as exc:
            # The run is queued (durable); only its reason waits for the next refresh.
            log.info("queued_reason not set", run_id=run.id, error=str(exc))

    async def stop_run(self, run_id: int, *, grace_s: float | None, actor: str) -> Run:
        grace = self.default_grace_s if grace_s is None else grace_s
        # The common case, a running run, in one round trip; the others read the run first.
        requested = await self.history.stop_requests.record(run_id, actor=actor, grace_s=grace)
        if requested is None:
            run = await self.history.get_run(run_id)  # NotFound (404) if there is none
            if run.status.is_terminal:
                raise Conflict(
                    f"run {run_id} has already ended ({run.status})", code="run_finished"
                )
            if run.status is RunStatus.QUEUED:
                stopped = await self.history.stop_queued_run(run_id, actor=actor)
                if stopped is not None:
                    metrics.run_ended(RunStatus.STOPPED)  # it never started: no attempt ends
                    return stopped
            # Claimed between the two reads (queued a moment ago, started now): record it.
            requested = await self.history.stop_requests.record(run_id, actor=actor, grace_s=grace)
            if requested is None:
                raise Conflict(f"run {run_id} has already ended", code="run_finished")
        if requested.node in (None, self.node_id):
            # Told, not awaited: the stop is recorded, and the Supervisor re-delivers recorded
            # stops every few seconds should this one be lost; the answer need not wait.
            try:
                self.supervisor.stop_run(run_id, grace, actor)
            except pykka.ActorDeadError:
                raise ServiceUnavailable("the service is shutting down") from None
        else:
            request = StopRequest(run_id=run_id, grace_s=grace, requested_by=actor)
            # In a worker thread: LiveState's Redis client blocks.
            if not await asyncio.to_thread(self.live.send_stop, requested.node, request):
                # The stop is recorded: the owning node re-delivers it to itself within seconds.
                log.warning("stop not sent through Redis; the owner will find it")
        return requested

    async def drain_node(self, node_id: str, *, deadline_s: float | None, actor: str) -> None:
        """Record the drain in PostgreSQL (where the node reads it back within seconds), then
        tell the node: its Supervisor if it is this one, else its control channel."""
        recorded = await self.history.drains.request(node_id, deadline_s=deadline_s, actor=actor)
        if recorded is None:
            raise NotFound(f"node {node_id} not found")
        if isinstance(recorded, str):
            raise Conflict(
                f"node {node_id} is {recorded}: only a node that is up (or draining) drains",
                code="node_not_up",
            )
        if node_id == self.node_id:
            try:
                self.supervisor.drain(deadline_s)  # told, not awaited
            except pykka.ActorDeadError:
                raise ServiceUnavailable("the service is shutting down") from None
            return
        request = DrainRequest(deadline_s=deadline_s, requested_by=actor)
        if not await asyncio.to_thread(self.live.send_control, node_id, request):
            log.warning("drain not sent through Redis; the node will find it", node=node_id)

    async def running_count(self) -> int:
        return await _ask(self.supervisor.running_count())


async def _ask(future: pykka.Future[T]) -> T:
    try:
        return await asyncio.to_thread(future.get, timeout=ASK_TIMEOUT_S)
    except pykka.Timeout:
        raise ServiceUnavailable("the supervisor did not answer in time; try again") from None
    except pykka.ActorDeadError:
        raise ServiceUnavailable("the service is shutting down") from None
