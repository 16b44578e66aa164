"""The original assignment's routes: same paths and JSON shapes (README.md, Legacy API).

The original sends a JSON body even with GET; these handlers ignore it, as it did.

`result` holds at most RUNVISOR_LEGACY_RESULT_BYTES of a run's output, its tail, read as a byte
range: a run may have stored gigabytes. A large result is decoded and JSON-encoded in a worker
thread, a slice at a time, and written as it is encoded, so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from aiohttp import web

from runvisor.http.appkeys import CONTROL, HISTORY, SETTINGS, STREAMS, principal_of
from runvisor.http.bodies import read_model
from runvisor.http.legacy_responses import LegacyCommand, LegacyRun, character_start
from runvisor.http.params import LEGACY_PAGE_LIMIT, parse_id, parse_pagination
from runvisor.http.request_models import LegacyCommandIn
from runvisor.http.responses import ResponseModel
from runvisor.http.streams import finish_within, write_within
from runvisor.models import Run, RunSpec
from runvisor.store.output_reads import plan_read

STOP_WAIT_MAX_S = 15.0  # the original answered STOPPED: wait a while for the run to end
POLL_S = 0.05
INLINE_RESULT_BYTES = 64 * 1024  # a result up to this size is encoded on the event loop
ENCODE_SLICE_CHARS = 32 * 1024  # characters of a large result JSON-encoded per step (<= 384 KiB)


async def ping(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def create_command(request: web.Request) -> web.Response:
    body = await read_model(request, LegacyCommandIn, required=True)
    assert body is not None
    command = await request.app[HISTORY].create_command(
        body.to_spec(), actor=principal_of(request).name
    )
    return web.json_response(LegacyCommand.of(command).to_json())


async def get_command(request: web.Request) -> web.StreamResponse:
    command_id = parse_id(request.match_info["id"], "command")
    history = request.app[HISTORY]
    command = await history.get_command(command_id)
    latest = await history.latest_run(command_id)
    with _read_slot(request):
        output, skipped = await _result_output(request, latest) if latest else (b"", 0)
        build = functools.partial(
            LegacyCommand.of,
            command,
            latest_run=latest,
            latest_output=output,
            latest_skipped=skipped,
        )
        return await _json_with_result(request, build, len(output))


async def list_commands(request: web.Request) -> web.Response:
    limit, offset = parse_pagination(
        request.query,
        default_limit=LEGACY_PAGE_LIMIT,
        max_limit=request.app[SETTINGS].max_page_limit,
    )
    items, _total = await request.app[HISTORY].list_commands(limit=limit, offset=offset)
    return web.json_response([LegacyCommand.of(c).to_json() for c in items])


async def exec_command(request: web.Request) -> web.StreamResponse:
    command_id = parse_id(request.match_info["id"], "command")
    run = await request.app[CONTROL].start_run(
        command_id, RunSpec(), actor=principal_of(request).name
    )
    return await _run_response(request, run)


async def get_result(request: web.Request) -> web.StreamResponse:
    run_id = parse_id(request.match_info["id"], "run")
    run = await request.app[HISTORY].get_run(run_id)
    with _read_slot(request):
        return await _run_response(request, run)


async def stop_run(request: web.Request) -> web.StreamResponse:
    run_id = parse_id(request.match_info["id"], "run")
    control = request.app[CONTROL]
    run = await control.stop_run(run_id, grace_s=None, actor=principal_of(request).name)
    deadline = time.monotonic() + min(control.default_grace_s + 2.0, STOP_WAIT_MAX_S)
    while not run.status.is_terminal and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        run = await request.app[HISTORY].get_run(run_id)
    return await _run_response(request, run)


async def _run_response(request: web.Request, run: Run) -> web.StreamResponse:
    history = request.app[HISTORY]
    command = await history.get_command(run.command_id, include_deleted=True)
    output, skipped = await _result_output(request, run)
    build = functools.partial(LegacyRun.of, run, command, output, skipped=skipped)
    return await _json_with_result(request, build, len(output))


def _read_slot(request: web.Request) -> AbstractContextManager[None]:
    """A slot of RUNVISOR_MAX_OUTPUT_STREAMS (429 when none is free) for a viewer's read of a
    result, held until it is written. Exec and stop take none: they must not be refused after
    acting, and their results are of runs just started or stopped by an operator."""
    return request.app[STREAMS].hold(principal_of(request).name)


async def _result_output(request: web.Request, run: Run) -> tuple[bytes, int]:
    """The tail of the run's output for `result`, at most RUNVISOR_LEGACY_RESULT_BYTES, and how
    many bytes before it are left out (the tail starts at a UTF-8 character)."""
    end = run.output_bytes
    start = max(end - request.app[SETTINGS].legacy_result_bytes, 0)
    if end <= start:
        return b"", 0
    gap = run.output_gap
    # The kept bytes of [start, end): past max_output_bytes, the marker stands for the gap.
    kept = end - start if gap is None else max(gap[0] - start, 0) + end - max(start, gap[1])
    plan = plan_read(output_bytes=end, gap=gap, offset=start, limit=kept)
    pieces = request.app[HISTORY].iter_output_plan(run.id, plan)
    output = b"".join([piece async for piece in pieces])
    if not start:
        return output, 0
    cut = character_start(output)
    return output[cut:], start + cut


async def _json_with_result(
    request: web.Request, build: Callable[[], ResponseModel], output_bytes: int
) -> web.StreamResponse:
    """The JSON of `build()`, whose "result" holds `output_bytes` bytes of output."""
    if output_bytes <= INLINE_RESULT_BYTES:
        return web.json_response(build().to_json())
    data = await asyncio.to_thread(lambda: build().to_json())  # decodes the output
    before, after = _json_around(data, "result")
    text: str = data.pop("result")
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.charset = "utf-8"
    timeout_s = request.app[SETTINGS].output_write_timeout_s
    await response.prepare(request)
    # A client that goes away, or takes nothing for timeout_s, ends this with a ConnectionError:
    # the errors middleware logs it as one line.
    await write_within(request, response, before, timeout_s)
    for start in range(0, len(text), ENCODE_SLICE_CHARS):
        encoded = await asyncio.to_thread(_encode_slice, text, start)
        await write_within(request, response, encoded, timeout_s)
    await write_within(request, response, after, timeout_s)
    await finish_within(request, response, timeout_s)
    return response


def _json_around(data: dict[str, Any], key: str) -> tuple[bytes, bytes]:
    """The JSON of `data` (as json.dumps writes it) before and after the string value of `key`,
    quotes excluded; the value itself is encoded apart."""
    keys = list(data)
    at = keys.index(key)
    head = json.dumps({k: data[k] for k in keys[:at]})
    tail = json.dumps({k: data[k] for k in keys[at + 1 :]})
    before = (head[:-1] + ", " if len(head) > 2 else "{") + json.dumps(key) + ': "'
    after = '"' + (", " + tail[1:] if len(tail) > 2 else "}")
    return before.encode(), after.encode()


def _encode_slice(text: str, start: int) -> memoryview:
    """Characters [start, start + ENCODE_SLICE_CHARS) of `text` as JSON string content."""
    quoted = json.dumps(text[start : start + ENCODE_SLICE_CHARS]).encode("ascii")
    return memoryview(quoted)[1:-1]  # without the quotes, and without copying
