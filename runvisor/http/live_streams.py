"""Live output streams: `GET /api/v1/runs/{id}/events` (Server-Sent Events) and
`GET /api/v1/runs/{id}/output?follow=1` (the raw bytes, chunked, until the run ends).

Both follow the run through output_follow.OutputFollower and hold one of the node's live stream
slots while they last (MAX_LIVE_STREAMS per node, RUNVISOR_MAX_LIVE_STREAMS_PER_TOKEN per
token; 429 past either). The SSE framing is aiohttp-sse's, with its heartbeat comments.

SSE events:
- `status`: the run (as GET /api/v1/runs/{id} answers it), first, then at each status change;
- `output`: the output as text; `data` is one JSON string (`JSON.parse(e.data)` gives the
  text back exactly: a raw CR or LF could not survive in a `data:` line); the event's `id` is
  the byte offset just after the bytes it carries;
- `end`: the run once it has ended and all its output was sent; then the stream closes.
Text is UTF-8 decoded with invalid bytes replaced; a character cut by the end of a piece waits
for the rest, so an `id` never falls inside one.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from runvisor.errors import StoreUnavailable
from runvisor.http.appkeys import HISTORY, LIVE_HUB, LIVE_STREAMS, REDIS, SETTINGS, principal_of
from runvisor.http.live_hub import NodeStopping
from runvisor.http.output_follow import OutputFollower, Piece, RunSeen
from runvisor.http.params import MAX_ID, parse_id, parse_int_param
from runvisor.http.responses import Run
from runvisor.http.streams import ClientTooSlow, finish_within, write_within
from runvisor.logs import get_logger

MAX_LIVE_STREAMS = 1024  # live streams at once on one node, by all tokens together
LAST_EVENT_ID = "Last-Event-ID"

log = get_logger(__name__)


class TextEvents:
    """Output bytes -> text for `output` events, and the offset each one ends at."""

    def __init__(self, offset: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._next = offset  # the offset of the next byte expected

    @property
    def offset(self) -> int:
        """Bytes turned into text so far: the next byte an `output` event would start at."""
        return self._next - len(self._decoder.getstate()[0])

    def feed(self, piece: Piece) -> list[tuple[str, int]]:
        """(text, offset after it) for the piece; bytes of a character cut by the piece's end
        are held until the next one."""
        out: list[tuple[str, int]] = []
        if piece.start != self._next:  # past a gap: what was held is not followed by its rest
            out += self.finish()
            self._decoder.reset()
        text = self._decoder.decode(piece.data)
        self._next = piece.end
        if text:
            out.append((text, self.offset))
        return out

    def finish(self) -> list[tuple[str, int]]:
        text = self._decoder.decode(b"", final=True)
        return [(text, self._next)] if text else []


def start_offset(request: web.Request) -> int:
    """Where a stream starts: the Last-Event-ID a reconnecting EventSource sends, else
    ?offset=, else 0."""
    last_id = request.headers.get(LAST_EVENT_ID)
    if last_id is not None and last_id.strip():
        query = {"Last-Event-ID": last_id.strip()}
        offset = parse_int_param(query, "Last-Event-ID", default=0, minimum=0, maximum=MAX_ID)
    else:
        offset = parse_int_param(request.query, "offset", default=0, minimum=0)
    assert offset is not None
    return offset


def _follower(request: web.Request, run_id: int, offset: int) -> OutputFollower:
    def client_gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    app = request.app
    return OutputFollower(
        history=app[HISTORY],
        hub=app[LIVE_HUB],
        redis=app[REDIS],
        run_id=run_id,
        offset=offset,
        client_gone=client_gone,
    )


async def run_events(request: web.Request) -> web.StreamResponse:
    run_id = parse_id(request.match_info["id"], "run")
    offset = start_offset(request)
    run = await request.app[HISTORY].get_run(run_id)
    if run.status.is_terminal and LAST_EVENT_ID in request.headers and offset >= run.output_bytes:
        # An EventSource reconnecting after `end`: 204 tells it to stop reconnecting.
        return web.Response(status=204)
    settings = request.app[SETTINGS]
    with request.app[LIVE_STREAMS].hold(principal_of(request).name):
        async with sse_response(
            request,
            send_timeout=settings.output_write_timeout_s,
            ping_interval=settings.sse_heartbeat_s,
        ) as sse:
            await _send_events(sse, _follower(request, run_id, offset), TextEvents(offset))
    return sse


async def _send_events(
    sse: EventSourceResponse, follower: OutputFollower, text: TextEvents
) -> None:
    async def send(event: str, data: str, offset: int) -> None:
        try:
            await sse.send(data, id=str(offset), event=event)
        except TimeoutError:
            raise ClientTooSlow("the client did not take an event in time") from None

    def run_json(seen: RunSeen) -> str:
        return json.dumps(Run.of(seen.run).to_json())

    items = follower.items()
    async with _ending_quietly(), contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, Piece):
                for chunk, offset in text.feed(item):
                    await send("output", json.dumps(chunk, ensure_ascii=False), offset)
            elif item.last:
                for chunk, offset in text.finish():
                    await send("output", json.dumps(chunk, ensure_ascii=False), offset)
                await send("end", run_json(item), text.offset)
            else:
                await send("status", run_json(item), text.offset)


async def follow_output(
    request: web.Request, run_id: int, offset: int, limit: int | None
) -> web.StreamResponse:
    """GET …/output?follow=1: the bytes from `offset` as they come, until the run has ended
    (or `limit` bytes were sent)."""
    run = await request.app[HISTORY].get_run(run_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/plain",
            "X-Output-Offset": str(offset),
            "X-Run-Status": str(run.status),
        }
    )
    response.enable_chunked_encoding()
    end = None if limit is None else offset + limit
    timeout_s = request.app[SETTINGS].output_write_timeout_s
    with request.app[LIVE_STREAMS].hold(principal_of(request).name):
        await response.prepare(request)
        items = _follower(request, run_id, offset).items()
        async with _ending_quietly(), contextlib.aclosing(items):
            async for item in items:
                if not isinstance(item, Piece):
                    continue
                data = item.data if end is None else item.data[: max(0, end - item.start)]
                if data:
                    await write_within(request, response, data, timeout_s)
                if end is not None and item.end >= end:
                    break
        await finish_within(request, response, timeout_s)
    return response


@contextlib.asynccontextmanager
async def _ending_quietly() -> Any:
    """A stream that cannot go on ends its answer normally: the node stops (the client
    reconnects, to another node), or PostgreSQL went away (it reconnects later)."""
    try:
        yield
    except NodeStopping:
        log.info("live stream ended: the node stops")
    except StoreUnavailable as exc:
        log.info("live stream ended: PostgreSQL is unavailable", error=exc.message)
