"""runvisor.http.params: query and path parameters."""

from __future__ import annotations

import pytest

from runvisor.errors import BadRequest, NotFound
from runvisor.http.params import (
    MAX_ID,
    parse_choice_param,
    parse_id,
    parse_output_range,
    parse_pagination,
    parse_status_filter,
    parse_text_param,
)
from runvisor.models import RunStatus


def test_pagination() -> None:
    assert parse_pagination({}, default_limit=50, max_limit=1000) == (50, 0)
    assert parse_pagination({}, default_limit=50, max_limit=20) == (20, 0)
    assert parse_pagination({"limit": "", "offset": ""}, default_limit=10, max_limit=100) == (10, 0)
    assert parse_pagination({"limit": "100", "offset": "007"}, default_limit=10, max_limit=100) == (
        100,
        7,
    )
    assert parse_pagination({"offset": str(MAX_ID)}, default_limit=10, max_limit=100) == (
        10,
        MAX_ID,
    )


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": "五"}, "limit"),
        ({"limit": "²"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": str(MAX_ID + 1)}, "offset"),
        ({"offset": "9" * 5000}, "offset"),
    ],
)
def test_bad_pagination(query: dict[str, str], name: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_pagination(query, default_limit=10, max_limit=100)
    assert info.value.code == "invalid_parameter"
    assert info.value.message.startswith(f"{name}: ")


def test_parse_id() -> None:
    assert parse_id("42", "run") == 42
    assert parse_id("0042", "run") == 42
    assert parse_id(str(MAX_ID), "run") == MAX_ID
    for raw in ("", "-1", "1.0", "abc", " 1", "1e3", "٣", "0x10"):
        with pytest.raises(BadRequest) as info:
            parse_id(raw, "run")
        assert info.value.code == "invalid_id"
        assert "run" in info.value.message
    for raw in ("0", str(MAX_ID + 1), "9" * 10_000):
        with pytest.raises(NotFound) as nf:
            parse_id(raw, "command")
        assert "command" in nf.value.message
        assert len(nf.value.message) < 120


def test_leading_zeros_of_any_length_are_the_number() -> None:
    # int() refuses strings over 4300 digits: "0" * 5000 + "7" once reached it and raised.
    zeros = "0" * 5000
    assert parse_id(zeros + "7", "run") == 7
    assert parse_pagination(
        {"limit": zeros + "5", "offset": zeros}, default_limit=10, max_limit=100
    ) == (5, 0)
    assert parse_output_range({"offset": zeros + "3", "limit": zeros + "1"}) == (3, 1)
    with pytest.raises(NotFound):
        parse_id(zeros, "run")  # 0
    with pytest.raises(NotFound):
        parse_id(zeros + str(MAX_ID + 1), "run")
    with pytest.raises(BadRequest):
        parse_pagination({"offset": zeros + "9" * 20}, default_limit=10, max_limit=100)


def test_text_filters() -> None:
    assert parse_text_param({}, "action") is None
    assert parse_text_param({"action": ""}, "action") is None
    assert parse_text_param({"action": "run.stop"}, "action") == "run.stop"
    assert parse_text_param({"actor": "ünïcode ok"}, "actor") == "ünïcode ok"
    assert parse_text_param({"actor": "x" * 200}, "actor") == "x" * 200
    for raw in ("a\x00b", "\n", "tab\there", "\x85", "x" * 201, "\ud800"):
        with pytest.raises(BadRequest) as info:
            parse_text_param({"actor": raw}, "actor")
        assert info.value.code == "invalid_parameter" and info.value.message.startswith("actor: ")


def test_choice_filters() -> None:
    roles = ("viewer", "admin", "node")
    assert parse_choice_param({}, "role", roles) is None
    assert parse_choice_param({"role": ""}, "role", roles) is None
    assert parse_choice_param({"role": "Admin"}, "role", roles) == "admin"
    for raw in ("root", "admin,viewer", "\x00", "1"):
        with pytest.raises(BadRequest) as info:
            parse_choice_param({"role": raw}, "role", roles)
        assert (
            info.value.code == "invalid_parameter" and "viewer, admin, node" in info.value.message
        )


def test_status_filter() -> None:
    assert parse_status_filter({}) is None
    assert parse_status_filter({"status": ""}) is None
    assert parse_status_filter({"status": "running"}) == (RunStatus.RUNNING,)
    assert parse_status_filter({"status": "failed, Running,failed"}) == (
        RunStatus.RUNNING,
        RunStatus.FAILED,
    )
    assert set(parse_status_filter({"status": "active"}) or ()) == {
        RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.RESTARTING
    }  # fmt: skip
    terminal = parse_status_filter({"status": "terminal"}) or ()
    assert len(terminal) == 5 and all(s.is_terminal for s in terminal)
    with pytest.raises(BadRequest) as info:
        parse_status_filter({"status": "running,done"})
    assert info.value.code == "invalid_parameter"
    assert "'done'" in info.value.message and "timed_out" in info.value.message


def test_output_range() -> None:
    assert parse_output_range({}) == (0, None)
    assert parse_output_range({"offset": "10", "limit": "5"}) == (10, 5)
    for query in ({"offset": "-1"}, {"limit": "0"}, {"limit": "x"}):
        with pytest.raises(BadRequest) as info:
            parse_output_range(query)
        assert info.value.code == "invalid_parameter"
