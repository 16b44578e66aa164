"""The route table: every route, v1 and legacy, with its handler, role, body and answers.

The app factory registers the routes from it (app.py), the authentication middleware reads the
role each one needs, and openapi.py builds the OpenAPI document from it: one table, so what is
served, what is checked and what is documented cannot differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from runvisor.http import health, legacy, live_streams, nodes, scrape, v1
from runvisor.http.auth import Role
from runvisor.http.legacy_responses import LegacyCommand, LegacyRun
from runvisor.http.node_responses import Node, NodeList
from runvisor.http.request_models import CommandIn, DrainIn, LegacyCommandIn, RunIn, StopIn
from runvisor.http.responses import (
    AuditEntryPage,
    Command,
    CommandPage,
    Health,
    Readiness,
    Run,
    RunPage,
    ServerSentEvent,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_legacy_path(path: str) -> bool:
    """The original assignment's routes: everything outside /api/ and the probes."""
    return not path.startswith(("/api/", "/healthz", "/readyz", "/metrics"))


@dataclass(frozen=True)
class Reply:
    """One documented answer. `body` is the type its JSON is built from (a response model or a
    list of one; `str` for text); None: no body. `headers`: name -> (type, meaning)."""

    description: str
    body: Any = None
    media_type: str = "application/json"
    headers: Mapping[str, tuple[type, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation_id: str
    role: Role | None  # the least role that may call it; None: open, no token needed
    handler: Handler
    summary: str
    replies: Mapping[int, Reply]  # the success answers; openapi.py adds the errors
    query: tuple[str, ...] = ()  # documented query parameters, by their key in openapi.py
    body: type[BaseModel] | None = None  # the request body's model
    body_required: bool = False
    extra_errors: tuple[int, ...] = ()  # beyond those the route's shape implies (openapi.py)

    @property
    def legacy(self) -> bool:
        return is_legacy_path(self.path)


_LOCATION = {"Location": (str, "URL of the new resource")}
_OUTPUT = Reply(
    "The output bytes in [offset, offset+limit), exactly as written",
    body=str,
    media_type="text/plain",
    headers={
        "X-Output-Bytes": (int, "the run's output bytes stored so far"),
        "X-Output-Offset": (int, "the offset of the first byte returned"),
        "X-Run-Status": (str, "the run's status"),
    },
)
_EVENTS = Reply(
    "Server-Sent Events until the run has ended: `status` (the run, as getRun answers it; first,"
    " then at each status change), `output` (data: one JSON string, the text; id: the byte"
    " offset after it), `end` (the ended run; the stream closes). Heartbeat comments keep an"
    " idle stream open",
    body=ServerSentEvent,
    media_type="text/event-stream",
)
_V, _O, _A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
# fmt: off
ROUTE_TABLE: tuple[Route, ...] = (
    Route("POST", "/api/v1/commands", "createCommand", _A, v1.create_command, "Create a command",
          {201: Reply("Created", Command, headers=_LOCATION)}, body=CommandIn, body_required=True),
    Route("GET", "/api/v1/commands", "listCommands", _V, v1.list_commands,
          "List commands, oldest first", {200: Reply("A page of commands", CommandPage)},
          query=("limit", "offset")),
    Route("GET", "/api/v1/commands/{id}", "getCommand", _V, v1.get_command, "Read a command",
          {200: Reply("The command", Command)}),
    Route("DELETE", "/api/v1/commands/{id}", "deleteCommand", _A, v1.delete_command,
          "Delete a command (its runs stay as history); 409 while it has active runs",
          {204: Reply("Deleted")}, extra_errors=(409,)),
    Route("POST", "/api/v1/commands/{id}/runs", "startRun", _O, v1.start_run,
          "Start a run of a command",
          {202: Reply("Accepted: the run is queued", Run, headers=_LOCATION)}, body=RunIn),
    Route("GET", "/api/v1/runs", "listRuns", _V, v1.list_runs, "List runs, newest first",
          {200: Reply("A page of runs", RunPage)},
          query=("command_id", "status", "limit", "offset")),
    Route("GET", "/api/v1/runs/{id}", "getRun", _V, v1.get_run, "Read a run",
          {200: Reply("The run", Run)}, query=("wait_s",), extra_errors=(429,)),
    Route("GET", "/api/v1/runs/{id}/output", "getRunOutput", _V, v1.get_run_output,
          "Read a run's output bytes; with follow=1, as they come until the run ends",
          {200: _OUTPUT}, query=("output_offset", "output_limit", "follow"),
          extra_errors=(429,)),
    Route("GET", "/api/v1/runs/{id}/events", "getRunEvents", _V, live_streams.run_events,
          "Follow a run: its output so far, then new output and status changes as they come"
          " (Server-Sent Events)",
          {200: _EVENTS, 204: Reply("The run has ended and Last-Event-ID is at its end: an"
                                    " EventSource stops reconnecting")},
          query=("events_offset", "last_event_id"), extra_errors=(429,)),
    Route("POST", "/api/v1/runs/{id}/stop", "stopRun", _O, v1.stop_run,
          "Stop a run: SIGTERM to all its processes, SIGKILL after grace_s; 409 if finished",
          {202: Reply("Accepted: the run is stopping", Run)}, body=StopIn, extra_errors=(409,)),
    Route("GET", "/api/v1/audit", "listAudit", _A, v1.list_audit,
          "List the audit log, newest first",
          {200: Reply("A page of audit entries", AuditEntryPage)},
          query=("audit_action", "audit_actor", "audit_role", "audit_command_id", "audit_run_id",
                 "limit", "offset")),
    Route("GET", "/api/v1/nodes", "listNodes", _V, nodes.list_nodes,
          "List the nodes: labels, state, lease, capacity, running and queued runs",
          {200: Reply("Every node that has ever started, by id", NodeList)}),
    Route("GET", "/api/v1/nodes/{id}", "getNode", _V, nodes.get_node, "Read a node",
          {200: Reply("The node", Node)}),
    Route("POST", "/api/v1/nodes/{id}/drain", "drainNode", _A, nodes.drain_node,
          "Drain a node: it claims no more runs; its runs finish, or past deadline_s are "
          "stopped and restarted elsewhere by policy; 409 if it is not up",
          {202: Reply("Accepted: the node, draining", Node)}, body=DrainIn, extra_errors=(409,)),
    Route("GET", "/healthz", "healthz", None, health.healthz, "Liveness",
          {200: Reply("Alive", Health)}),
    Route("GET", "/readyz", "readyz", None, health.readyz,
          "Readiness: can PostgreSQL and Redis be reached",
          {200: Reply("Ready", Readiness),
           503: Reply("Not ready: `stores` says which is down", Readiness)}),
    Route("GET", "/api/v1/openapi.json", "getOpenapi", None, health.openapi, "This document",
          {200: Reply("The OpenAPI document", dict[str, Any])}),
    Route("GET", "/metrics", "getMetrics", _V, scrape.metrics_text,
          "The node's metrics, in Prometheus's text format",
          {200: Reply("The metrics (text format 0.0.4)", body=str, media_type="text/plain")}),
    # The original assignment's routes: same paths and shapes.
    Route("POST", "/command", "legacyCreateCommand", _A, legacy.create_command,
          "Create a command (legacy)", {200: Reply("The command", LegacyCommand)},
          body=LegacyCommandIn, body_required=True),
    Route("GET", "/command/{id}", "legacyGetCommand", _V, legacy.get_command,
          "Read a command, with its latest run's output (legacy)",
          {200: Reply("The command", LegacyCommand)}, extra_errors=(429,)),
    Route("GET", "/commands", "legacyListCommands", _V, legacy.list_commands,
          "List commands by created_at (legacy; offset counts rows, not pages)",
          {200: Reply("The commands", list[LegacyCommand])}, query=("legacy_limit", "offset")),
    Route("GET", "/command/exec/{id}", "legacyExecCommand", _O, legacy.exec_command,
          "Start a run of the command {id} (legacy)",
          {200: Reply("The run, normally RUNNING", LegacyRun)}),
    Route("GET", "/command/result/{id}", "legacyGetResult", _V, legacy.get_result,
          "Read the run {id} (legacy)",
          {200: Reply("The run; result is the output so far", LegacyRun)}, extra_errors=(429,)),
    Route("GET", "/command/stop/{id}", "legacyStopRun", _O, legacy.stop_run,
          "Stop the run {id} (legacy); 409 if it has finished",
          {200: Reply("The run, normally STOPPED", LegacyRun)}, extra_errors=(409,)),
    Route("GET", "/ping", "legacyPing", _V, legacy.ping, "Ping (legacy)",
          {200: Reply("Empty body")}),
)
# fmt: on

ROUTES: list[tuple[str, str, str]] = [(r.method, r.path, r.operation_id) for r in ROUTE_TABLE]
REQUIRED_ROLES: dict[str, Role | None] = {r.operation_id: r.role for r in ROUTE_TABLE}
