"""Live output over real HTTP: GET /api/v1/runs/{id}/events (Server-Sent Events, read with a
reader written to the WHATWG standard, tests/sse_spec.py) and GET …/output?follow=1."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import redis
import requests

from runvisor.store.redis_keys import RedisKeys
from tests.fix_service import ADMIN, VIEWER, Api, Service
from tests.polling import wait_until
from tests.sse_spec import SseEvent, SseReader

TICKER = 'for i in $(seq 1 100); do echo "line $i"; sleep 0.05; done'
EXPECTED_TICKER = "".join(f"line {i}\n" for i in range(1, 101))


class EventStream:
    """One connection to …/events, read as an EventSource reads it."""

    def __init__(
        self, api: Api, run_id: int, *, last_event_id: str | None = None, token: str = ADMIN
    ) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(
            f"{api.base}/api/v1/runs/{run_id}/events", headers=headers, stream=True, timeout=30
        )
        self.reader = SseReader()
        self.events: list[SseEvent] = []

    def close(self) -> None:
        self.response.close()


def read_with_disconnects(
    api: Api, run_id: int, cuts: int, rng: random.Random
) -> tuple[str, dict[str, object]]:
    """Read the run's events to `end`, dropping the connection `cuts` times at random points
    (in the middle of a chunk, so mid-event too) and resuming with Last-Event-ID, as an
    EventSource does. Returns the text of the `output` events put together, and the run of
    the `end` event."""
    text: list[str] = []
    last_id: str | None = None
    ended: dict[str, object] = {}
    left = cuts
    connections = 0
    while not ended:
        connections += 1
        stream = EventStream(api, run_id, last_event_id=last_id)
        assert stream.response.status_code == 200, stream.response.text
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        budget = rng.randint(20, 400) if left else None  # bytes to read before cutting
        got = 0
        try:
            for chunk in stream.response.iter_content(chunk_size=None):
                if budget is not None and got + len(chunk) >= budget:
                    chunk = chunk[: budget - got]  # the rest is lost with the connection
                got += len(chunk)
                for event in stream.reader.feed(chunk):
                    if event.type == "output":
                        text.append(json.loads(event.data))
                    elif event.type == "end":
                        ended = json.loads(event.data)
                if stream.reader.last_event_id:
                    last_id = stream.reader.last_event_id
                if ended or (budget is not None and got >= budget):
                    break
        finally:
            stream.close()
        if budget is not None:
            left -= 1
            time.sleep(rng.uniform(0, 0.4))  # the client is away a while
    assert connections == cuts + 1
    return "".join(text), ended


def test_an_event_stream_cut_three_times_resumes_without_gap_or_duplicate(api: Api) -> None:
    run = api.run_code(TICKER)
    seed = random.randrange(1 << 30)
    text, ended = read_with_disconnects(api, run["id"], 3, random.Random(seed))
    assert ended["status"] == "succeeded", ended
    assert text == EXPECTED_TICKER, f"seed {seed}"
    assert api.output(run["id"]).decode() == EXPECTED_TICKER
    assert api.run(run["id"])["status"] == "succeeded"


def test_the_other_node_of_two_streams_the_run_through_redis(
    service_factory: Callable[..., Service],
) -> None:
    node_a, node_b = service_factory("node-a"), service_factory("node-b")
    run = node_a.api.run_code(TICKER)
    owner = wait_until(lambda: node_a.api.run(run["id"])["node"], 10, "the run to be claimed")
    other = node_b if owner == "node-a" else node_a
    seed = random.randrange(1 << 30)
    text, ended = read_with_disconnects(other.api, run["id"], 3, random.Random(seed))
    assert ended["status"] == "succeeded", ended
    assert text == EXPECTED_TICKER, f"seed {seed}"
    assert other.api.output(run["id"]).decode() == EXPECTED_TICKER


# CRLF, a lone CR, empty lines, a 4-byte character split across two writes, an invalid byte
# and a last line with no newline; the writes are apart in time, so they are published apart.
TRICKY = (
    r"printf 'one\r\ntwo\rthree\n\n\nfour '; sleep 0.5; printf '\xf0\x9f'; sleep 0.5;"
    r" printf '\x98\x80 five\xff six\n\nlast'"
)
TRICKY_BYTES = b"one\r\ntwo\rthree\n\n\nfour \xf0\x9f\x98\x80 five\xff six\n\nlast"


def test_text_arrives_exactly_through_eventsource_semantics(api: Api) -> None:
    run = api.run_code(TRICKY)
    stream = EventStream(api, run["id"], token=VIEWER)
    outputs: list[SseEvent] = []
    kinds: list[str] = []
    try:
        for chunk in stream.response.iter_content(chunk_size=None):
            for event in stream.reader.feed(chunk):
                kinds.append(event.type)
                if event.type == "output":
                    outputs.append(event)
            if "end" in kinds:
                break
    finally:
        stream.close()
    text = "".join(json.loads(e.data) for e in outputs)
    assert text == TRICKY_BYTES.decode("utf-8", errors="replace")
    assert "\U0001f600" in text and "\ufffd" in text
    # Each output event's id is the byte offset after its bytes; no id falls inside the
    # 4-byte character, and the last one is the end of the output.
    ids = [int(e.last_event_id) for e in outputs]
    assert ids == sorted(ids) and ids[-1] == len(TRICKY_BYTES)
    start = TRICKY_BYTES.index(b"\xf0")
    assert not any(start < i < start + 4 for i in ids)
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert api.output(run["id"]) == TRICKY_BYTES  # /output stays the byte-exact source


def test_output_reaches_the_stream_before_postgresql_has_it(
    service_factory: Callable[..., Service],
) -> None:
    # PostgreSQL is written every 30 s only: what the stream shows came through Redis.
    api = service_factory(RUNVISOR_FLUSH_INTERVAL_S="30").api
    run = api.run_code("echo early; sleep 20; echo late")
    stream = EventStream(api, run["id"])
    seen = ""
    started = time.monotonic()
    try:
        for chunk in stream.response.iter_content(chunk_size=None):
            for event in stream.reader.feed(chunk):
                if event.type == "output":
                    seen += json.loads(event.data)
            if "early" in seen:
                break
            assert time.monotonic() - started < 15, "no live output"
    finally:
        stream.close()
    assert seen == "early\n"
    assert api.output(run["id"]) == b""  # not stored yet
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})


def test_a_reconnect_after_the_end_is_told_to_stop(api: Api) -> None:
    run = api.run_code("printf abc")
    api.wait_finished(run["id"])
    events = read_all(api, run["id"])
    assert [e.type for e in events] == ["status", "output", "end"]
    assert json.loads(events[-1].data)["status"] == "succeeded"
    assert events[-1].last_event_id == "3"
    again = api.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "3"})
    assert again.status_code == 204
    # From an earlier offset it resumes there.
    resumed = read_all(api, run["id"], last_event_id="1")
    assert [json.loads(e.data) for e in resumed if e.type == "output"] == ["bc"]


def read_all(api: Api, run_id: int, last_event_id: str | None = None) -> list[SseEvent]:
    stream = EventStream(api, run_id, last_event_id=last_event_id)
    events: list[SseEvent] = []
    try:
        for chunk in stream.response.iter_content(chunk_size=None):
            events += stream.reader.feed(chunk)
    finally:
        stream.close()
    return events


def test_heartbeats_keep_an_idle_stream_open(service_factory: Callable[..., Service]) -> None:
    api = service_factory(RUNVISOR_SSE_HEARTBEAT_S="0.3").api
    run = api.run_code("sleep 30")
    stream = EventStream(api, run["id"])
    try:
        for chunk in stream.response.iter_content(chunk_size=None):
            stream.reader.feed(chunk)
            if len(stream.reader.comments) >= 3:
                break
    finally:
        stream.close()
    assert stream.reader.comments[:3] == [" ping"] * 3


def test_live_streams_per_token_are_limited(service_factory: Callable[..., Service]) -> None:
    api = service_factory(RUNVISOR_MAX_LIVE_STREAMS_PER_TOKEN="1").api
    run = api.run_code("sleep 30")
    first = EventStream(api, run["id"])
    try:
        assert first.response.status_code == 200
        second = api.get(f"/api/v1/runs/{run['id']}/events")
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_streams"
        assert "RUNVISOR_MAX_LIVE_STREAMS_PER_TOKEN" in second.json()["error"]["message"]
        assert second.headers["Retry-After"] == "1"
        follow = api.get(f"/api/v1/runs/{run['id']}/output?follow=1")
        assert follow.status_code == 429
        assert api.get(f"/api/v1/runs/{run['id']}/events", token=VIEWER).status_code == 200
    finally:
        first.close()
    # The slot is freed once the server notices the client has gone.
    wait_until(
        lambda: (
            api.get(f"/api/v1/runs/{run['id']}/output?follow=1&limit=1").status_code == 200 or None
        ),
        10,
        "the slot to be free again",
    )


def test_bad_requests_for_a_stream(api: Api) -> None:
    run = api.run_code("true")
    path = f"/api/v1/runs/{run['id']}"
    assert api.get(f"{path}/events", headers={"Last-Event-ID": "x"}).status_code == 400
    assert api.get(f"{path}/output?follow=maybe").status_code == 400
    assert api.get("/api/v1/runs/999999/events").status_code == 404
    assert api.get(f"{path}/events", token="").status_code == 401


def test_a_stream_ends_cleanly_when_the_node_stops(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    run = service.api.run_code("sleep 60")
    stream = EventStream(service.api, run["id"])
    done = threading.Event()
    kinds: list[str] = []

    def read() -> None:
        for chunk in stream.response.iter_content(chunk_size=None):
            kinds.extend(e.type for e in stream.reader.feed(chunk))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: kinds, 10, "the first event")
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 4  # not held up by the stream (shutdown_timeout is 5 s)
    assert done.wait(5)
    assert "end" not in kinds  # the run goes on: an EventSource reconnects (to another node)
    stream.close()
    service.start()  # the fixture stops the run


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_follows_the_output_until_the_run_ends(api: Api) -> None:
    run = api.run_code("echo first; sleep 3; echo second; printf third")
    url = f"{api.base}/api/v1/runs/{run['id']}/output?follow=1"
    curl = subprocess.Popen(
        ["curl", "-sN", "-H", f"Authorization: Bearer {VIEWER}", url],
        stdout=subprocess.PIPE,
    )
    try:
        assert curl.stdout is not None
        assert curl.stdout.readline() == b"first\n"
        assert api.run(run["id"])["status"] == "running"  # it came before the run ended
        rest = curl.stdout.read()
        assert curl.wait(10) == 0
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    assert rest == b"second\nthird"
    assert api.run(run["id"])["status"] == "succeeded"


def test_follow_starts_at_offset_and_stops_at_limit(api: Api) -> None:
    run = api.run_code("printf 0123456789; sleep 1; printf abcdef")
    response = api.get(f"/api/v1/runs/{run['id']}/output?follow=1&offset=5")
    assert response.status_code == 200 and response.content == b"56789abcdef"
    assert response.headers.get("Transfer-Encoding") == "chunked"
    limited = api.get(f"/api/v1/runs/{run['id']}/output?follow=1&offset=2&limit=4")
    assert limited.content == b"2345"


def test_streams_of_a_node_share_one_subscription(
    service_factory: Callable[..., Service], redis_server_url: str, redis_prefix: str
) -> None:
    node_a, node_b = service_factory(), service_factory()
    run = node_a.api.run_code("sleep 30")
    channel = RedisKeys(redis_prefix).run_events(run["id"])
    raw = redis.Redis.from_url(redis_server_url)

    def subscribers() -> int:
        return int(raw.pubsub_numsub(channel)[0][1])

    streams = [EventStream(node_a.api, run["id"]) for _ in range(3)]
    try:
        wait_until(lambda: subscribers() == 1, 10, "node a to subscribe")
        streams.append(EventStream(node_b.api, run["id"], token=VIEWER))
        wait_until(lambda: subscribers() == 2, 10, "node b to subscribe")
    finally:
        for stream in streams:
            stream.close()
    # Once the clients have gone, nobody on either node follows the run.
    wait_until(lambda: subscribers() == 0, 10, "the nodes to unsubscribe")
    raw.close()
