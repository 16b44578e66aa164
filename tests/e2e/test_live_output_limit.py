"""Live output (SSE `…/events`, `…/output?follow=1`) of runs past their max_output_bytes: the
marker line takes the gap's place, and every other byte comes at its own offset."""

from __future__ import annotations

import json
import re

from tests.e2e.test_live_output import EventStream
from tests.e2e.test_output_limit import SMALL, SMALL_OUTPUT, marker
from tests.fix_service import Api
from tests.polling import wait_until

MARKER = re.compile(r"\n\[runvisor: \d+ bytes dropped\]\n")
# 300 lines of 10 bytes, 3,000 in all, a line every 10 ms: the gap grows while a reader follows.
SLOW = 'for i in $(seq 1 300); do printf "line %04d\\n" $i; sleep 0.01; done'
SLOW_OUTPUT = b"".join(b"line %04d\n" % i for i in range(1, 301))


def events(api: Api, run_id: int) -> list[tuple[str, str, int]]:
    """(type, data, id) of every event up to `end`."""
    stream = EventStream(api, run_id)
    got: list[tuple[str, str, int]] = []
    try:
        assert stream.response.status_code == 200, stream.response.text
        for chunk in stream.response.iter_content(chunk_size=None):
            for event in stream.reader.feed(chunk):
                got.append((event.type, event.data, int(event.last_event_id or 0)))
                if event.type == "end":
                    return got
    finally:
        stream.close()
    raise AssertionError(f"the stream ended without an end event: {got}")


def check_offsets(outputs: list[tuple[str, int]], whole: bytes) -> str:
    """Each output event's bytes are the run's at the offsets its id gives (a marker's id is
    the gap's end); the texts put together."""
    at = 0
    for text, event_id in outputs:
        if MARKER.fullmatch(text):
            assert event_id > at, (text, event_id, at)
        else:
            data = text.encode()
            assert whole[event_id - len(data) : event_id] == data, (text, event_id)
            assert event_id - len(data) == at, (text, event_id, at)
        at = event_id
    assert at == len(whole)
    return "".join(text for text, _ in outputs)


def test_the_events_of_an_ended_run_carry_the_marker_at_the_gap(api: Api) -> None:
    run_id = api.wait_finished(api.run_code(SMALL, max_output_bytes=1000)["id"])["id"]
    got = events(api, run_id)
    outputs = [(json.loads(data), event_id) for kind, data, event_id in got if kind == "output"]
    text = check_offsets(outputs, SMALL_OUTPUT)
    assert text.encode() == SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]
    follow = api.get(f"/api/v1/runs/{run_id}/output?follow=1")
    assert follow.content == SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]
    # From inside the gap: the marker, then the tail.
    inside = api.get(f"/api/v1/runs/{run_id}/output?follow=1&offset=600")
    assert inside.content == marker(4008) + SMALL_OUTPUT[-500:]


def test_a_follower_joining_past_the_limit_gets_the_head_the_marker_then_each_byte(
    api: Api,
) -> None:
    run_id = api.run_code(SLOW, max_output_bytes=1000)["id"]
    wait_until(lambda: api.run(run_id)["output_gap"], 30, "the run to pass its limit")
    got = events(api, run_id)
    outputs = [(json.loads(data), event_id) for kind, data, event_id in got if kind == "output"]
    text = check_offsets(outputs, SLOW_OUTPUT).encode()
    # The head, the gap as it was when the follower came, then the run's output as it came
    # (a follower that keeps up sees every byte; the record keeps the last 500 only).
    assert text.startswith(SLOW_OUTPUT[:500] + b"\n[runvisor: ")
    assert text.endswith(SLOW_OUTPUT[-500:])
    ended = json.loads(next(data for kind, data, _ in got if kind == "end"))
    assert ended["output_gap"] == {"start": 500, "end": 2500}
    # Read again once ended: one marker, exactly the kept bytes.
    again = api.get(f"/api/v1/runs/{run_id}/output?follow=1")
    assert again.content == SLOW_OUTPUT[:500] + marker(2000) + SLOW_OUTPUT[-500:]
