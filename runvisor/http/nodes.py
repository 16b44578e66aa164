"""Handlers of the nodes routes (/api/v1/nodes): each node's row, lease, state and counts."""

from __future__ import annotations

from aiohttp import web

from runvisor.errors import BadRequest, NotFound
from runvisor.http.appkeys import CONTROL, HISTORY, NODE_LEASES, principal_of
from runvisor.http.bodies import read_model
from runvisor.http.fleet import FleetNode, read_fleet
from runvisor.http.node_responses import Node, NodeList
from runvisor.http.request_models import DrainIn
from runvisor.http.validation import shorten
from runvisor.placement import PlacementError, check_node_id


async def list_nodes(request: web.Request) -> web.Response:
    fleet = await read_fleet(request.app[HISTORY], request.app[NODE_LEASES])
    return web.json_response(NodeList(items=await _shown(request, fleet)).to_json())


async def get_node(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    try:
        node_id = check_node_id(raw)
    except PlacementError as exc:
        raise BadRequest(str(exc), code="invalid_id") from None
    fleet = await read_fleet(request.app[HISTORY], request.app[NODE_LEASES], node_id)
    if not fleet:
        raise NotFound(f"node {shorten(raw)} not found")
    return web.json_response((await _shown(request, fleet))[0].to_json())


async def drain_node(request: web.Request) -> web.Response:
    """Drain a node: it claims nothing more; its runs finish, or are stopped at the deadline
    and restarted elsewhere by policy. Answers with the node, `draining`."""
    raw = request.match_info["id"]
    node_id = _node_id(raw)
    body = await read_model(request, DrainIn, required=False) or DrainIn()
    await request.app[CONTROL].drain_node(
        node_id, deadline_s=body.deadline_s, actor=principal_of(request).name
    )
    fleet = await read_fleet(request.app[HISTORY], request.app[NODE_LEASES], node_id)
    if not fleet:
        raise NotFound(f"node {shorten(raw)} not found")
    return web.json_response((await _shown(request, fleet))[0].to_json(), status=202)


def _node_id(raw: str) -> str:
    try:
        return check_node_id(raw)
    except PlacementError as exc:
        raise BadRequest(str(exc), code="invalid_id") from None


async def _shown(request: web.Request, fleet: list[FleetNode]) -> list[Node]:
    counts = await request.app[HISTORY].nodes.counts([n.record.id for n in fleet])
    return [
        Node.of(
            n.record,
            state=n.state,
            lease_expires_at=n.lease_expires_at,
            running=counts.get(n.record.id, (0, 0))[0],
            queued=counts.get(n.record.id, (0, 0))[1],
        )
        for n in fleet
    ]
