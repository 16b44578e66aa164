"""The stop one node sends another over Redis: what it writes is what the other end reads, and
anything else on the channel is refused with a reason, never half-read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.protocol import DrainRequest, StopRequest, parse_control_message


@given(
    run_id=st.integers(1, 2**63 - 1),
    grace_s=st.floats(0, 3600, allow_nan=False, allow_infinity=False),
    requested_by=st.text(min_size=1),
)
def test_a_stop_request_survives_the_round_trip(
    run_id: int, grace_s: float, requested_by: str
) -> None:
    request = StopRequest(run_id=run_id, grace_s=grace_s, requested_by=requested_by)
    assert StopRequest.from_json(request.to_json()) == request
    assert StopRequest.from_json(request.to_json().encode()) == request  # as Redis hands it over


def test_the_wire_format_is_the_one_nodes_already_speak() -> None:
    # A node of the previous version sends and expects exactly these keys.
    request = StopRequest(run_id=12, grace_s=2.5, requested_by="operator:0123abcd")
    assert json.loads(request.to_json()) == {
        "type": "stop",
        "run_id": 12,
        "grace_s": 2.5,
        "by": "operator:0123abcd",
    }
    sent_by_the_previous_version = b'{"type": "stop", "run_id": 12, "grace_s": 1, "by": "admin:x"}'
    assert StopRequest.from_json(sent_by_the_previous_version) == StopRequest(12, 1.0, "admin:x")


GOOD = {"type": "stop", "run_id": 3, "grace_s": 1.0, "by": "admin:ed626e10"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nested too deep to parse
        (b"[1, 2]", "not a JSON object"),
        (b"5", "not a JSON object"),
        (b'"stop"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (json.dumps({**GOOD, "type": "start"}).encode(), "unknown type 'start'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "type"}).encode(), "unknown type"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "run_id"}).encode(), "run_id"),
        (json.dumps({**GOOD, "run_id": "3"}).encode(), "run_id"),
        (json.dumps({**GOOD, "run_id": 3.0}).encode(), "run_id"),
        (json.dumps({**GOOD, "run_id": True}).encode(), "run_id"),
        (json.dumps({**GOOD, "run_id": 0}).encode(), "run_id"),
        (json.dumps({**GOOD, "run_id": -4}).encode(), "run_id"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "grace_s"}).encode(), "grace_s"),
        (json.dumps({**GOOD, "grace_s": "1"}).encode(), "grace_s"),
        (json.dumps({**GOOD, "grace_s": -1}).encode(), "grace_s"),
        (json.dumps({**GOOD, "grace_s": False}).encode(), "grace_s"),
        (b'{"type": "stop", "run_id": 3, "grace_s": NaN, "by": "a"}', "grace_s"),
        (b'{"type": "stop", "run_id": 3, "grace_s": Infinity, "by": "a"}', "grace_s"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "by"}).encode(), "by"),
        (json.dumps({**GOOD, "by": ""}).encode(), "by"),
        (json.dumps({**GOOD, "by": 7}).encode(), "by"),
    ],
)
def test_a_malformed_control_message_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        StopRequest.from_json(raw)


def test_the_good_message_of_the_malformed_cases_is_accepted() -> None:
    # The cases above each break one thing of this one: they fail for that thing alone.
    assert StopRequest.from_json(json.dumps(GOOD)) == StopRequest(3, 1.0, "admin:ed626e10")


@given(
    deadline_s=st.none() | st.floats(0, 7 * 86400, allow_nan=False, allow_infinity=False),
    requested_by=st.text(min_size=1),
)
def test_a_drain_request_survives_the_round_trip(
    deadline_s: float | None, requested_by: str
) -> None:
    request = DrainRequest(deadline_s=deadline_s, requested_by=requested_by)
    assert parse_control_message(request.to_json().encode()) == request


def test_the_control_channel_tells_stops_and_drains_apart() -> None:
    stop = StopRequest(run_id=3, grace_s=1.0, requested_by="admin:x")
    assert parse_control_message(stop.to_json()) == stop
    assert json.loads(DrainRequest(None, "admin:x").to_json()) == {
        "type": "drain",
        "deadline_s": None,
        "by": "admin:x",
    }
    with pytest.raises(ValueError, match="unknown type 'drain'"):
        StopRequest.from_json(DrainRequest(1.0, "admin:x").to_json())  # a drain is no stop


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"type": "drain", "deadline_s": -1, "by": "a"}, "deadline_s: must be a finite number"),
        ({"type": "drain", "deadline_s": True, "by": "a"}, "deadline_s: must be a finite number"),
        ({"type": "drain", "deadline_s": "5", "by": "a"}, "deadline_s: must be a finite number"),
        ({"type": "drain", "deadline_s": 5}, "by: must be a non-empty string"),
        ({"type": "drain", "deadline_s": 5, "by": ""}, "by: must be a non-empty string"),
    ],
)
def test_a_malformed_drain_is_refused_with_a_reason(raw: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_control_message(json.dumps(raw))
