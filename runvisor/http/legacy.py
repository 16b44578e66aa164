"""The original assignment's routes: same paths and JSON shapes (see LEGACY_API.md).

The original sends a JSON body even with GET; these handlers ignore it, as it did.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from runvisor.http.bodies import read_model
from runvisor.http.keys import CONTROL, HISTORY, SETTINGS, principal_of
from runvisor.http.schemas import LEGACY_PAGE_LIMIT, LegacyCommandIn, parse_id, parse_pagination
from runvisor.http.serialize import legacy_command_json, legacy_run_json
from runvisor.models import Run, RunSpec

STOP_WAIT_MAX_S = 15.0  # the original answered STOPPED: wait a while for the run to end
POLL_S = 0.05


async def ping(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def create_command(request: web.Request) -> web.Response:
    body = await read_model(request, LegacyCommandIn, required=True)
    assert body is not None
    command = await request.app[HISTORY].create_command(
        body.to_spec(), actor=principal_of(request).name
    )
    return web.json_response(legacy_command_json(command))


async def get_command(request: web.Request) -> web.Response:
    command_id = parse_id(request.match_info["id"], "command")
    history = request.app[HISTORY]
    command = await history.get_command(command_id)
    latest = await history.latest_run(command_id)
    output = await history.read_output(latest.id) if latest is not None else None
    return web.json_response(legacy_command_json(command, latest_run=latest, latest_output=output))


async def list_commands(request: web.Request) -> web.Response:
    limit, offset = parse_pagination(
        request.query,
        default_limit=LEGACY_PAGE_LIMIT,
        max_limit=request.app[SETTINGS].max_page_limit,
    )
    items, _total = await request.app[HISTORY].list_commands(limit=limit, offset=offset)
    return web.json_response([legacy_command_json(c) for c in items])


async def exec_command(request: web.Request) -> web.Response:
    command_id = parse_id(request.match_info["id"], "command")
    run = await request.app[CONTROL].start_run(
        command_id, RunSpec(), actor=principal_of(request).name
    )
    return await _run_response(request, run)


async def get_result(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    return await _run_response(request, await request.app[HISTORY].get_run(run_id))


async def stop_run(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    control = request.app[CONTROL]
    run = await control.stop_run(run_id, grace_s=None, actor=principal_of(request).name)
    deadline = time.monotonic() + min(control.default_grace_s + 2.0, STOP_WAIT_MAX_S)
    while not run.status.is_terminal and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        run = await request.app[HISTORY].get_run(run_id)
    return await _run_response(request, run)


async def _run_response(request: web.Request, run: Run) -> web.Response:
    history = request.app[HISTORY]
    command = await history.get_command(run.command_id, include_deleted=True)
    output = await history.read_output(run.id)
    return web.json_response(legacy_run_json(run, command, output))


HANDLERS = {
    "legacyPing": ping,
    "legacyCreateCommand": create_command,
    "legacyGetCommand": get_command,
    "legacyListCommands": list_commands,
    "legacyExecCommand": exec_command,
    "legacyGetResult": get_result,
    "legacyStopRun": stop_run,
}
