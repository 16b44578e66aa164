"""Handlers of the v1 API (/api/v1/...); routes.py maps each route to one."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from runvisor.http.appkeys import CONTROL, HISTORY, RUN_WAITS, SETTINGS, STREAMS, principal_of
from runvisor.http.auth import Role
from runvisor.http.bodies import read_model
from runvisor.http.live_streams import follow_output
from runvisor.http.params import (
    AUDIT_ROLES,
    DEFAULT_PAGE_LIMIT,
    parse_choice_param,
    parse_flag,
    parse_id,
    parse_int_param,
    parse_output_range,
    parse_pagination,
    parse_status_filter,
    parse_text_param,
)
from runvisor.http.request_models import CommandIn, RunIn, StopIn
from runvisor.http.responses import AuditEntry, AuditEntryPage, Command, CommandPage, Run, RunPage
from runvisor.http.run_waits import MAX_WAIT_S
from runvisor.http.streams import finish_within, write_within
from runvisor.models import RunSpec


async def create_command(request: web.Request) -> web.Response:
    body = await read_model(request, CommandIn, required=True)
    assert body is not None
    command = await request.app[HISTORY].create_command(
        body.to_spec(), actor=principal_of(request).name
    )
    location = f"/api/v1/commands/{command.id}"
    return web.json_response(
        Command.of(command).to_json(), status=201, headers={"Location": location}
    )


async def list_commands(request: web.Request) -> web.Response:
    limit, offset = _page(request)
    items, total = await request.app[HISTORY].list_commands(limit=limit, offset=offset)
    page = CommandPage(
        items=[Command.of(c) for c in items], limit=limit, offset=offset, total=total
    )
    return web.json_response(page.to_json())


async def get_command(request: web.Request) -> web.Response:
    command_id = parse_id(request.match_info["id"], "command")
    command = await request.app[HISTORY].get_command(command_id)
    return web.json_response(Command.of(command).to_json())


async def delete_command(request: web.Request) -> web.Response:
    command_id = parse_id(request.match_info["id"], "command")
    await request.app[HISTORY].delete_command(command_id, actor=principal_of(request).name)
    return web.Response(status=204)


async def start_run(request: web.Request) -> web.Response:
    command_id = parse_id(request.match_info["id"], "command")
    body = await read_model(request, RunIn, required=False)
    spec = body.to_spec() if body is not None else RunSpec()
    spec = dataclasses.replace(spec, may_loosen=principal_of(request).role >= Role.ADMIN)
    run = await request.app[CONTROL].start_run(command_id, spec, actor=principal_of(request).name)
    return web.json_response(
        Run.of(run).to_json(), status=202, headers={"Location": f"/api/v1/runs/{run.id}"}
    )


async def list_runs(request: web.Request) -> web.Response:
    limit, offset = _page(request)
    command_id = parse_int_param(request.query, "command_id", default=None, minimum=1)
    statuses = parse_status_filter(request.query)
    items, total = await request.app[HISTORY].list_runs(
        command_id=command_id, statuses=statuses, limit=limit, offset=offset
    )
    page = RunPage(items=[Run.of(r) for r in items], limit=limit, offset=offset, total=total)
    return web.json_response(page.to_json())


async def get_run(request: web.Request) -> web.Response:
    """The run; with `wait_s`, once it has ended or after that many seconds (run_waits.py)."""
    run_id = parse_id(request.match_info["id"], "run")
    wait_s = parse_int_param(request.query, "wait_s", default=0, minimum=0, maximum=MAX_WAIT_S)
    history = request.app[HISTORY]
    run = await request.app[RUN_WAITS].wait_until_terminal(
        run_id, wait_s or 0, lambda: history.get_run(run_id)
    )
    return web.json_response(Run.of(run).to_json())


async def get_run_output(request: web.Request) -> web.StreamResponse:
    """The output bytes, streamed: a run may have stored gigabytes. A stream holds one piece at
    a time and one of the node's RUNVISOR_MAX_OUTPUT_STREAMS slots (429 when none is free)."""
    run_id = parse_id(request.match_info["id"], "run")
    offset, limit = parse_output_range(request.query)
    if parse_flag(request.query, "follow"):
        return await follow_output(request, run_id, offset, limit)
    history = request.app[HISTORY]
    run = await history.get_run(run_id)
    # Everything below output_bytes is stored: serve exactly that range, even as more arrives.
    end = run.output_bytes if limit is None else min(run.output_bytes, offset + limit)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/plain",
            "X-Output-Bytes": str(run.output_bytes),
            "X-Output-Offset": str(offset),
            "X-Run-Status": str(run.status),
        }
    )
    response.content_length = max(end - offset, 0)
    write_timeout_s = request.app[SETTINGS].output_write_timeout_s
    with request.app[STREAMS].hold(principal_of(request).name):
        await response.prepare(request)
        if end > offset:
            async for piece in history.iter_output(run_id, offset=offset, end=end):
                await write_within(request, response, piece, write_timeout_s)
                del piece  # not held while the next piece is fetched
        await finish_within(request, response, write_timeout_s)
    return response


async def stop_run(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    body = await read_model(request, StopIn, required=False)
    run = await request.app[CONTROL].stop_run(
        run_id, grace_s=body.grace_s if body else None, actor=principal_of(request).name
    )
    return web.json_response(Run.of(run).to_json(), status=202)


async def list_audit(request: web.Request) -> web.Response:
    limit, offset = _page(request)
    query = request.query
    items, total = await request.app[HISTORY].list_audit(
        action=parse_text_param(query, "action"),
        actor=parse_text_param(query, "actor"),
        role=parse_choice_param(query, "role", AUDIT_ROLES),
        command_id=parse_int_param(query, "command_id", default=None, minimum=1),
        run_id=parse_int_param(query, "run_id", default=None, minimum=1),
        limit=limit,
        offset=offset,
    )
    page = AuditEntryPage(
        items=[AuditEntry.of(e) for e in items], limit=limit, offset=offset, total=total
    )
    return web.json_response(page.to_json())


def _page(request: web.Request) -> tuple[int, int]:
    return parse_pagination(
        request.query,
        default_limit=DEFAULT_PAGE_LIMIT,
        max_limit=request.app[SETTINGS].max_page_limit,
    )
