"""runvisor.http.responses and legacy_responses: the JSON each response model builds."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from runvisor.errors import Conflict, NotFound, Unprocessable
from runvisor.http import probe_responses, responses
from runvisor.http.auth import Role
from runvisor.http.legacy_responses import (
    LEGACY_RESULT_MARKER,
    LegacyCommand,
    LegacyRun,
    character_start,
    legacy_result,
    legacy_status,
)
from runvisor.http.responses import timestamp
from runvisor.models import Attempt, AuditEntry, Command, Run, RunStatus

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T0_JSON = "2024-05-01T12:00:00.000000Z"

# The fields in the order they are sent (the README's examples show them so).
COMMAND_FIELDS = ["id", "name", "code", "description", "created_at", "timeout_s", "stuck_after_s",
                  "restart", "max_output_bytes", "on_output_limit", "env", "limits", "node",
                  "labels"]  # fmt: skip
RUN_FIELDS = [
    "id", "command_id", "status", "exit_code", "signal", "reason", "node", "pid", "attempt",
    "restart_count", "next_attempt_at", "attempts", "created_at", "started_at", "finished_at",
    "output_bytes", "output_truncated", "output_gap", "stop_requested_by", "stop_requested_at",
    "code", "timeout_s", "stuck_after_s", "restart", "max_output_bytes", "on_output_limit",
    "limits", "env_keys", "placement", "queued_reason",
]  # fmt: skip
ATTEMPT_FIELDS = ["attempt", "node", "pid", "started_at", "finished_at", "exit_code", "signal",
                  "reason", "output_offset", "leftovers_killed"]  # fmt: skip


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
    assert timestamp(T0) == T0_JSON
    assert timestamp(datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))) == (
        "2024-05-01T12:00:00.000005Z"
    )
    assert timestamp(datetime(2024, 5, 1, 12, 0)) == T0_JSON  # naive: taken as UTC
    assert datetime.fromisoformat(timestamp(T0)) == T0


# ---- v1 -----------------------------------------------------------------------------------


def test_command_json() -> None:
    out = responses.Command.of(make_command()).to_json()
    assert list(out) == COMMAND_FIELDS
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
    assert list(responses.Command.of(reordered).to_json()["env"]) == ["A", "B"]
    assert list(responses.Command.of(reordered).to_json()["limits"]) == ["cpu", "as", "nproc"]
    assert responses.Command.of(make_command(env={}, limits={})).to_json()["limits"] == {}
    json.dumps(out)


def test_run_json_fields() -> None:
    out = responses.Run.of(make_run()).to_json()
    assert list(out) == RUN_FIELDS
    assert out["status"] == "running" and isinstance(out["status"], str)
    assert out["restart"]["policy"] == "on-failure" and out["restart"]["max_restarts"] == 2
    assert out["started_at"] == "2024-05-01T12:00:01.000000Z"
    assert out["finished_at"] is None and out["next_attempt_at"] is None
    assert [a["attempt"] for a in out["attempts"]] == [1, 2]  # in order, whatever the input order
    for attempt in out["attempts"]:
        assert list(attempt) == ATTEMPT_FIELDS
    assert out["attempts"][0]["finished_at"] == "2024-05-01T12:00:01.500000Z"
    assert out["attempts"][1]["output_offset"] == 10
    assert out["limits"] == {"nofile": 256, "fsize": "unlimited"}
    assert responses.Run.of(make_run(limits={})).to_json()["limits"] == {}
    # Where it asks to run, apart from where it runs (`node`), and why it waits.
    assert out["placement"] == {"node": None, "labels": {}} and out["queued_reason"] is None
    pinned = make_run(place_node="n2", place_labels={"zone": "a", "gpu": "1"}, queued_reason="x")
    shown = responses.Run.of(pinned).to_json()
    assert shown["placement"] == {"node": "n2", "labels": {"gpu": "1", "zone": "a"}}
    assert shown["queued_reason"] == "x"
    json.dumps(out)


def test_run_json_hides_env_values_and_process_identity() -> None:
    text = json.dumps(responses.Run.of(make_run()).to_json())
    assert "hunter2" not in text
    assert "marker-secret-ish" not in text and "boot-1" not in text
    assert "123456" not in text
    assert responses.Run.of(make_run()).to_json()["env_keys"] == ["API_KEY", "ZED"]


def test_finished_run_json() -> None:
    run = make_run(
        status=RunStatus.STOPPED,
        signal=15,
        reason="stopped",
        finished_at=T0 + timedelta(minutes=1),
        stop_requested_by="operator:1a2b3c4d",
        stop_requested_at=T0 + timedelta(seconds=59),
    )
    out = responses.Run.of(run).to_json()
    assert out["status"] == "stopped" and out["signal"] == 15
    assert out["stop_requested_by"] == "operator:1a2b3c4d"
    assert out["stop_requested_at"] == "2024-05-01T12:00:59.000000Z"


def test_page() -> None:
    items = [responses.Command.of(make_command(id=i)) for i in (1, 2)]
    page = responses.CommandPage(items=items, limit=2, offset=4, total=9).to_json()
    assert page["limit"] == 2 and page["offset"] == 4 and page["total"] == 9
    assert [c["id"] for c in page["items"]] == [1, 2]
    assert list(page) == ["items", "limit", "offset", "total"]
    empty = responses.RunPage(items=[], limit=10, offset=0, total=0).to_json()
    assert empty["items"] == []


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
    out = LegacyCommand.of(make_command()).to_json()
    assert out == {
        "id": 7,
        "code": 'echo "new command"',
        "description": "maybe",
        "created_at": T0_JSON,
    }


def test_legacy_command_json_with_its_latest_run() -> None:
    out = LegacyCommand.of(
        make_command(), latest_run=make_run(), latest_output=b"new command\n\xff"
    ).to_json()
    assert out["last_run_id"] == 3
    assert out["last_run_status"] == "RUNNING"
    assert out["result"] == "new command\n\ufffd"
    assert LegacyCommand.of(make_command(), latest_run=make_run()).to_json()["result"] == ""


def test_legacy_run_json_while_running() -> None:
    out = LegacyRun.of(make_run(), make_command(), b"partial").to_json()
    assert out == {
        "id": 3,
        "command": LegacyCommand.of(make_command()).to_json(),
        "completed_at": "2024-05-01T12:00:01.000000Z",  # the start time until the run ends
        "result": "partial",
        "status": "RUNNING",
        "exit_code": None,
    }


def test_legacy_run_json_when_finished() -> None:
    run = make_run(status=RunStatus.FAILED, exit_code=2, finished_at=T0 + timedelta(minutes=2))
    out = LegacyRun.of(run, make_command(), b"").to_json()
    assert "result" not in out  # omitted when empty, as the original's omitempty
    assert out["status"] == "COMPLETED" and out["exit_code"] == 2
    assert out["completed_at"] == "2024-05-01T12:02:00.000000Z"


def test_legacy_run_json_before_start() -> None:
    run = make_run(status=RunStatus.QUEUED, started_at=None, attempts=[])
    out = LegacyRun.of(run, make_command(), None).to_json()
    assert out["completed_at"] == T0_JSON and "result" not in out
    assert list(out) == ["id", "command", "completed_at", "status", "exit_code"]


def test_legacy_output_with_binary_data_becomes_text() -> None:
    out = LegacyRun.of(make_run(), make_command(), b"\x00\x80ok").to_json()
    assert out["result"] == "\x00\ufffdok"
    json.dumps(out)


def test_a_result_that_is_a_tail_starts_with_the_marker() -> None:
    out = LegacyRun.of(make_run(), make_command(), b"the end\n", skipped=5000).to_json()
    marker = (
        "[runvisor: first 5000 bytes not shown; GET /api/v1/runs/3/output has the whole output]\n"
    )
    assert LEGACY_RESULT_MARKER.format(skipped=5000, run_id=3) == marker
    assert out["result"] == marker + "the end\n"
    assert list(out) == ["id", "command", "completed_at", "result", "status", "exit_code"]
    shown = LegacyCommand.of(
        make_command(), latest_run=make_run(id=9), latest_output=b"x", latest_skipped=1
    ).to_json()
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
    assert responses.AuditEntry.of(make_audit("operator:ad32160a")).to_json() == {
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
    node = responses.AuditEntry.of(
        make_audit("node:vm-1", action="run.succeeded", command_id=4)
    ).to_json()
    assert (node["role"], node["token_fingerprint"], node["node"]) == (None, None, "vm-1")
    assert node["command_id"] == 4 and node["actor"] == "node:vm-1"
    for odd in ("admin:XYZ", "root:ed626e10", "admin", "node:", ""):
        out = responses.AuditEntry.of(make_audit(odd)).to_json()
        assert out["actor"] == odd
        assert (out["role"], out["token_fingerprint"], out["node"]) == (None, None, None), odd


# ---- errors -------------------------------------------------------------------------------


def test_error_json() -> None:
    assert responses.Error.of(NotFound("run 5 not found")).to_json() == {
        "error": {"code": "not_found", "message": "run 5 not found"}
    }
    assert (
        responses.Error.of(Conflict("finished", code="run_finished")).to_json()["error"]["code"]
        == "run_finished"
    )
    exc = Unprocessable("code: must not be blank")
    exc.details = [{"field": "code", "message": "must not be blank", "type": "value_error"}]  # type: ignore[attr-defined]
    assert responses.Error.of(exc).to_json()["error"]["details"] == exc.details  # type: ignore[attr-defined]


def test_legacy_error_json() -> None:
    assert responses.LegacyError.of(NotFound("command 5 not found")).to_json() == {
        "error": "command 5 not found"
    }


# ---- the models read back what they send, and nothing else ---------------------------------


ISOLATION = {"user": "nobody", "uid": 65534, "gid": 65534, "uids": None, "process_tracking": "scan",
             "cgroup": None, "cgroup_controllers": [], "no_cgroup_reason": "no v2",
             "cgroup_favordynmods": None}  # fmt: skip


def sample_bodies() -> list[tuple[type[responses.ResponseModel], dict[str, Any]]]:
    """(model, the JSON it built) for every kind of response body."""
    command, run = make_command(), make_run()
    details = Unprocessable("x")
    details.details = [{"field": "code", "message": "is required", "type": "missing"}]  # type: ignore[attr-defined]
    built: list[responses.ResponseModel] = [
        responses.Command.of(command),
        responses.Command.of(make_command(env={}, limits={}, name=None)),
        responses.Run.of(run),
        responses.Run.of(make_run(status=RunStatus.QUEUED, attempts=[], started_at=None)),
        responses.RunPage(items=[responses.Run.of(run)], limit=1, offset=0, total=1),
        responses.CommandPage(items=[], limit=50, offset=0, total=0),
        responses.AuditEntryPage(
            items=[responses.AuditEntry.of(make_audit(a)) for a in ("admin:ed626e10", "node:x")],
            limit=2,
            offset=0,
            total=2,
        ),
        responses.Error.of(NotFound("nope")),
        responses.Error.of(details),
        responses.LegacyError.of(NotFound("nope")),
        probe_responses.Health(status="ok"),
        probe_responses.Readiness(
            status="ready",
            stores={"postgres": "ok", "redis": "ok"},
            runs=probe_responses.Isolation.model_validate(ISOLATION),
        ),
        LegacyCommand.of(command),
        LegacyCommand.of(command, latest_run=run, latest_output=b"", latest_skipped=0),
        LegacyRun.of(run, command, b"out"),
        LegacyRun.of(run, command, None),
        LegacyRun.of(run, command, b"tail", skipped=9),
    ]
    return [(type(model), model.to_json()) for model in built]


@pytest.mark.parametrize(("model", "body"), sample_bodies())
def test_each_body_reads_back_into_its_model_unchanged(
    model: type[responses.ResponseModel], body: dict[str, Any]
) -> None:
    """The JSON holds the model's fields only, each of its type (timestamps included)."""
    sent = json.loads(json.dumps(body))
    assert model.model_validate(sent).to_json() == body
    assert list(model.model_validate(sent).to_json()) == list(body)


@pytest.mark.parametrize(("model", "body"), sample_bodies())
def test_a_model_refuses_a_field_it_does_not_declare(
    model: type[responses.ResponseModel], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="surprise"):
        model.model_validate({**json.loads(json.dumps(body)), "surprise": 1})


def test_readiness_refuses_an_isolation_field_its_model_lacks() -> None:
    probe_responses.Isolation.model_validate(ISOLATION)
    with pytest.raises(ValidationError):
        probe_responses.Isolation.model_validate({**ISOLATION, "cgroup_version": 2})


def test_audit_role_labels_are_the_roles() -> None:
    assert get_args(responses.RoleLabel) == tuple(r.label for r in Role)
