"""runvisor.http.serialize: the JSON shapes of the README (the walkthrough, Legacy API)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from runvisor.errors import Conflict, NotFound, Unprocessable
from runvisor.http.serialize import (
    LEGACY_RESULT_MARKER,
    audit_json,
    character_start,
    command_json,
    error_json,
    legacy_command_json,
    legacy_error_json,
    legacy_result,
    legacy_run_json,
    legacy_status,
    page_json,
    run_json,
    timestamp,
)
from runvisor.models import Attempt, AuditEntry, Command, Run, RunStatus

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T0_JSON = "2024-05-01T12:00:00.000000Z"

COMMAND_FIELDS = {"id", "name", "code", "description", "created_at", "timeout_s", "stuck_after_s",
                  "restart", "max_output_bytes", "env", "limits"}  # fmt: skip
RUN_FIELDS = {  # a run as the README's walkthrough shows it
    "id", "command_id", "status", "exit_code", "signal", "reason", "node", "pid", "attempt",
    "restart_count", "next_attempt_at", "attempts", "created_at", "started_at", "finished_at",
    "output_bytes", "output_truncated", "stop_requested_by",
    "code", "timeout_s", "stuck_after_s", "restart", "max_output_bytes", "stop_requested_at",
    "env_keys", "limits",
}  # fmt: skip
ATTEMPT_FIELDS = {"attempt", "node", "pid", "started_at", "finished_at", "exit_code", "signal",
                  "reason", "output_offset", "leftovers_killed"}  # fmt: skip


def make_command(**changes: Any) -> Command:
    base = Command(
        id=7,
        name="greet",
        code='echo "new command"',
        description="maybe",
        created_at=T0,
        timeout_s=None,
        stuck_after_s=30.0,
        restart={"policy": "never"},
        max_output_bytes=1024,
        env={"GREETING": "hello", "TARGET": None},
        limits={"cpu": 10, "as": "unlimited"},
    )
    return dataclasses.replace(base, **changes)


def make_attempt(n: int, **changes: Any) -> Attempt:
    base = Attempt(
        run_id=3,
        attempt=n,
        node="node-a",
        pid=4000 + n,
        pid_start_ticks=123456,
        process_marker="marker-secret-ish",
        boot_id="boot-1",
        started_at=T0 + timedelta(seconds=n),
        finished_at=None,
        exit_code=None,
        signal=None,
        reason=None,
        output_offset=10 * (n - 1),
        leftovers_killed=0,
    )
    return dataclasses.replace(base, **changes)


def make_run(**changes: Any) -> Run:
    base = Run(
        id=3,
        command_id=7,
        code='echo "new command"',
        env={"ZED": "z", "API_KEY": "hunter2"},
        status=RunStatus.RUNNING,
        exit_code=None,
        signal=None,
        reason=None,
        node="node-a",
        pid=4002,
        attempt=2,
        restart_count=1,
        next_attempt_at=None,
        created_at=T0,
        started_at=T0 + timedelta(seconds=1),
        finished_at=None,
        output_bytes=12,
        output_truncated=False,
        stop_requested_by=None,
        stop_requested_at=None,
        stop_grace_s=None,
        timeout_s=60.0,
        stuck_after_s=None,
        restart={"policy": "on-failure", "max_restarts": 2},
        max_output_bytes=1024,
        limits={"nofile": 256, "fsize": "unlimited"},
        attempts=[
            make_attempt(2),
            make_attempt(1, finished_at=T0 + timedelta(seconds=1.5), exit_code=1, reason="exited"),
        ],
    )
    return dataclasses.replace(base, **changes)


# ---- timestamps ---------------------------------------------------------------------------


def test_timestamps_are_utc_with_z_and_fixed_width() -> None:
    assert timestamp(None) is None
    assert timestamp(T0) == T0_JSON
    assert timestamp(datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))) == (
        "2024-05-01T12:00:00.000005Z"
    )
    assert timestamp(datetime(2024, 5, 1, 12, 0)) == T0_JSON  # naive: taken as UTC
    assert datetime.fromisoformat(timestamp(T0) or "") == T0


# ---- v1 -----------------------------------------------------------------------------------


def test_command_json() -> None:
    out = command_json(make_command())
    assert set(out) == COMMAND_FIELDS
    assert out["id"] == 7 and out["created_at"] == T0_JSON and out["timeout_s"] is None
    # A partial stored policy is shown whole.
    assert out["restart"] == {
        "policy": "never",
        "max_restarts": 3,
        "window_s": 60.0,
        "backoff_s": 1.0,
        "backoff_max_s": 60.0,
    }
    # The declared variables with their defaults (admin-set, not secret), and the limits.
    assert out["env"] == {"GREETING": "hello", "TARGET": None}
    assert out["limits"] == {"cpu": 10, "as": "unlimited"}
    # Shown in a fixed order, whatever order the store gives them.
    reordered = make_command(env={"B": None, "A": "1"}, limits={"nproc": 5, "as": 1, "cpu": 2})
    assert list(command_json(reordered)["env"]) == ["A", "B"]
    assert list(command_json(reordered)["limits"]) == ["cpu", "as", "nproc"]
    assert command_json(make_command(env={}, limits={}))["limits"] == {}
    json.dumps(out)


def test_run_json_fields() -> None:
    out = run_json(make_run())
    assert set(out) == RUN_FIELDS
    assert out["status"] == "running" and isinstance(out["status"], str)
    assert out["restart"]["policy"] == "on-failure" and out["restart"]["max_restarts"] == 2
    assert out["started_at"] == "2024-05-01T12:00:01.000000Z"
    assert out["finished_at"] is None and out["next_attempt_at"] is None
    assert [a["attempt"] for a in out["attempts"]] == [1, 2]  # in order, whatever the input order
    for attempt in out["attempts"]:
        assert set(attempt) == ATTEMPT_FIELDS
    assert out["attempts"][0]["finished_at"] == "2024-05-01T12:00:01.500000Z"
    assert out["attempts"][1]["output_offset"] == 10
    assert out["limits"] == {"nofile": 256, "fsize": "unlimited"}
    assert run_json(make_run(limits={}))["limits"] == {}
    json.dumps(out)


def test_run_json_hides_env_values_and_process_identity() -> None:
    text = json.dumps(run_json(make_run()))
    assert "hunter2" not in text
    assert "marker-secret-ish" not in text and "boot-1" not in text
    assert "123456" not in text
    assert run_json(make_run())["env_keys"] == ["API_KEY", "ZED"]


def test_finished_run_json() -> None:
    run = make_run(
        status=RunStatus.STOPPED,
        signal=15,
        reason="stopped",
        finished_at=T0 + timedelta(minutes=1),
        stop_requested_by="operator:1a2b3c4d",
        stop_requested_at=T0 + timedelta(seconds=59),
    )
    out = run_json(run)
    assert out["status"] == "stopped" and out["signal"] == 15
    assert out["stop_requested_by"] == "operator:1a2b3c4d"
    assert out["stop_requested_at"] == "2024-05-01T12:00:59.000000Z"


def test_page_json() -> None:
    items = (command_json(make_command(id=i)) for i in (1, 2))
    page = page_json(items, limit=2, offset=4, total=9)
    assert page["limit"] == 2 and page["offset"] == 4 and page["total"] == 9
    assert [c["id"] for c in page["items"]] == [1, 2]
    assert set(page) == {"items", "limit", "offset", "total"}
    assert page_json([], limit=10, offset=0, total=0)["items"] == []


# ---- legacy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "legacy"),
    [
        (RunStatus.QUEUED, "RUNNING"),
        (RunStatus.RUNNING, "RUNNING"),
        (RunStatus.RESTARTING, "RUNNING"),
        (RunStatus.STOPPED, "STOPPED"),
        (RunStatus.SUCCEEDED, "COMPLETED"),
        (RunStatus.FAILED, "COMPLETED"),
        (RunStatus.TIMED_OUT, "COMPLETED"),
        (RunStatus.LOST, "COMPLETED"),
        ("succeeded", "COMPLETED"),
    ],
)
def test_legacy_status(status: RunStatus, legacy: str) -> None:
    assert legacy_status(status) == legacy


def test_legacy_status_covers_every_status() -> None:
    assert {legacy_status(s) for s in RunStatus} == {"RUNNING", "COMPLETED", "STOPPED"}


def test_legacy_command_json() -> None:
    out = legacy_command_json(make_command())
    assert out == {
        "id": 7,
        "code": 'echo "new command"',
        "description": "maybe",
        "created_at": T0_JSON,
    }


def test_legacy_command_json_with_its_latest_run() -> None:
    out = legacy_command_json(
        make_command(), latest_run=make_run(), latest_output=b"new command\n\xff"
    )
    assert out["last_run_id"] == 3
    assert out["last_run_status"] == "RUNNING"
    assert out["result"] == "new command\n\ufffd"
    assert legacy_command_json(make_command(), latest_run=make_run())["result"] == ""


def test_legacy_run_json_while_running() -> None:
    out = legacy_run_json(make_run(), make_command(), b"partial")
    assert out == {
        "id": 3,
        "command": legacy_command_json(make_command()),
        "completed_at": "2024-05-01T12:00:01.000000Z",  # the start time until the run ends
        "result": "partial",
        "status": "RUNNING",
        "exit_code": None,
    }


def test_legacy_run_json_when_finished() -> None:
    run = make_run(status=RunStatus.FAILED, exit_code=2, finished_at=T0 + timedelta(minutes=2))
    out = legacy_run_json(run, make_command(), b"")
    assert "result" not in out  # omitted when empty, as the original's omitempty
    assert out["status"] == "COMPLETED" and out["exit_code"] == 2
    assert out["completed_at"] == "2024-05-01T12:02:00.000000Z"


def test_legacy_run_json_before_start() -> None:
    run = make_run(status=RunStatus.QUEUED, started_at=None, attempts=[])
    out = legacy_run_json(run, make_command(), None)
    assert out["completed_at"] == T0_JSON and "result" not in out
    assert list(out) == ["id", "command", "completed_at", "status", "exit_code"]


def test_legacy_output_with_binary_data_becomes_text() -> None:
    out = legacy_run_json(make_run(), make_command(), b"\x00\x80ok")
    assert out["result"] == "\x00\ufffdok"
    json.dumps(out)


def test_a_result_that_is_a_tail_starts_with_the_marker() -> None:
    out = legacy_run_json(make_run(), make_command(), b"the end\n", skipped=5000)
    marker = (
        "[runvisor: first 5000 bytes not shown; GET /api/v1/runs/3/output has the whole output]\n"
    )
    assert LEGACY_RESULT_MARKER.format(skipped=5000, run_id=3) == marker
    assert out["result"] == marker + "the end\n"
    assert list(out) == ["id", "command", "completed_at", "result", "status", "exit_code"]
    shown = legacy_command_json(
        make_command(), latest_run=make_run(id=9), latest_output=b"x", latest_skipped=1
    )
    assert shown["result"].startswith("[runvisor: first 1 bytes not shown; GET /api/v1/runs/9/")
    assert shown["result"].endswith("output]\nx")
    assert legacy_result(b"whole", skipped=0, run_id=3) == "whole"  # no marker when all is shown


@pytest.mark.parametrize(
    ("text", "cut_at", "drop"),
    [
        ("héllo", 2, 1),  # inside é (2 bytes): its second byte goes
        ("a€b", 2, 2),  # inside € (3 bytes) after its first byte
        ("a€b", 3, 1),  # ... after its second
        ("a😀b", 2, 3),  # inside an emoji (4 bytes) after its first byte
        ("a😀b", 1, 0),  # at the start of a character: nothing goes
        ("plain", 2, 0),
    ],
)
def test_a_cut_tail_starts_at_a_character(text: str, cut_at: int, drop: int) -> None:
    tail = text.encode()[cut_at:]
    assert character_start(tail) == drop
    decoded = tail[drop:].decode("utf-8", errors="replace")
    assert "\ufffd" not in decoded and text.endswith(decoded)


def test_character_start_drops_at_most_three_bytes() -> None:
    assert character_start(b"\x80" * 10) == 3  # binary output: no more is lost
    assert character_start(b"") == 0 and character_start(b"\x80") == 1


# ---- audit --------------------------------------------------------------------------------


def make_audit(actor: str, **changes: Any) -> AuditEntry:
    base = AuditEntry(
        id=12,
        at=T0,
        actor=actor,
        action="run.stop",
        command_id=None,
        run_id=3,
        detail={"grace_s": 5.0},
    )
    return dataclasses.replace(base, **changes)


def test_audit_json_splits_a_principal() -> None:
    assert audit_json(make_audit("operator:ad32160a")) == {
        "id": 12,
        "at": T0_JSON,
        "actor": "operator:ad32160a",
        "role": "operator",
        "token_fingerprint": "ad32160a",
        "node": None,
        "action": "run.stop",
        "command_id": None,
        "run_id": 3,
        "detail": {"grace_s": 5.0},
    }


def test_audit_json_of_a_node_and_of_an_actor_of_no_known_form() -> None:
    node = audit_json(make_audit("node:vm-1", action="run.succeeded", command_id=4))
    assert (node["role"], node["token_fingerprint"], node["node"]) == (None, None, "vm-1")
    assert node["command_id"] == 4 and node["actor"] == "node:vm-1"
    for odd in ("admin:XYZ", "root:ed626e10", "admin", "node:", ""):
        out = audit_json(make_audit(odd))
        assert out["actor"] == odd
        assert (out["role"], out["token_fingerprint"], out["node"]) == (None, None, None), odd


# ---- errors -------------------------------------------------------------------------------


def test_error_json() -> None:
    assert error_json(NotFound("run 5 not found")) == {
        "error": {"code": "not_found", "message": "run 5 not found"}
    }
    assert error_json(Conflict("finished", code="run_finished"))["error"]["code"] == "run_finished"
    exc = Unprocessable("code: must not be blank")
    exc.details = [{"field": "code", "message": "must not be blank", "type": "value_error"}]  # type: ignore[attr-defined]
    assert error_json(exc)["error"]["details"] == exc.details  # type: ignore[attr-defined]


def test_legacy_error_json() -> None:
    assert legacy_error_json(NotFound("command 5 not found")) == {"error": "command 5 not found"}
