"""Records -> JSON-ready dicts, for the v1 API and the legacy routes (pure: no I/O).

Each function returns exactly the documented fields (README.md: the walkthrough, Legacy API);
the OpenAPI document describes the same shapes, and a test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from runvisor.errors import RunvisorError
from runvisor.http.auth import Role
from runvisor.models import (
    LIMIT_NAMES,
    Attempt,
    AuditEntry,
    Command,
    RestartPolicy,
    Run,
    RunStatus,
)


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a "Z" and always six fractional digits (one fixed width)."""
    if value is None:
        return None
    if value.tzinfo is None:  # the store gives aware datetimes; a naive one is taken as UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _restart(data: dict[str, Any]) -> dict[str, Any]:
    # The row may hold a partial policy ({"policy": "never"} by default): show every field.
    return RestartPolicy.from_json(data).to_json()


def _limits(data: dict[str, int | str]) -> dict[str, int | str]:
    # jsonb keeps keys in its own order: show them in LIMIT_NAMES order.
    return {name: data[name] for name in LIMIT_NAMES if name in data}


def command_json(c: Command) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "code": c.code,
        "description": c.description,
        "created_at": timestamp(c.created_at),
        "timeout_s": c.timeout_s,
        "stuck_after_s": c.stuck_after_s,
        "restart": _restart(c.restart),
        "max_output_bytes": c.max_output_bytes,
        # Defaults are set by an admin and are not secrets (unlike a run's values).
        "env": dict(sorted(c.env.items())),
        "limits": _limits(c.limits),
    }


def attempt_json(a: Attempt) -> dict[str, Any]:
    # process_marker and pid_start_ticks identify processes for adoption: internal only.
    return {
        "attempt": a.attempt,
        "node": a.node,
        "pid": a.pid,
        "started_at": timestamp(a.started_at),
        "finished_at": timestamp(a.finished_at),
        "exit_code": a.exit_code,
        "signal": a.signal,
        "reason": a.reason,
        "output_offset": a.output_offset,
        "leftovers_killed": a.leftovers_killed,
    }


def run_json(r: Run) -> dict[str, Any]:
    return {
        "id": r.id,
        "command_id": r.command_id,
        "status": str(r.status),
        "exit_code": r.exit_code,
        "signal": r.signal,
        "reason": r.reason,
        "node": r.node,
        "pid": r.pid,
        "attempt": r.attempt,
        "restart_count": r.restart_count,
        "next_attempt_at": timestamp(r.next_attempt_at),
        "attempts": [attempt_json(a) for a in sorted(r.attempts, key=lambda a: a.attempt)],
        "created_at": timestamp(r.created_at),
        "started_at": timestamp(r.started_at),
        "finished_at": timestamp(r.finished_at),
        "output_bytes": r.output_bytes,
        "output_truncated": r.output_truncated,
        "stop_requested_by": r.stop_requested_by,
        "stop_requested_at": timestamp(r.stop_requested_at),
        "code": r.code,
        "timeout_s": r.timeout_s,
        "stuck_after_s": r.stuck_after_s,
        "restart": _restart(r.restart),
        "max_output_bytes": r.max_output_bytes,
        "limits": _limits(r.limits),
        # Values may be secrets (API keys handed to a script): only the names are shown.
        "env_keys": sorted(r.env),
    }


_TOKEN_ROLES = frozenset(r.label for r in Role)
_FINGERPRINT = re.compile(r"[0-9a-f]{8}")


def audit_json(e: AuditEntry) -> dict[str, Any]:
    """An audit row; its actor ("admin:ed626e10" or "node:NAME") is also shown in parts."""
    prefix, _, rest = e.actor.partition(":")
    token = prefix in _TOKEN_ROLES and _FINGERPRINT.fullmatch(rest) is not None
    return {
        "id": e.id,
        "at": timestamp(e.at),
        "actor": e.actor,
        "role": prefix if token else None,
        "token_fingerprint": rest if token else None,
        "node": rest if prefix == "node" and rest else None,
        "action": e.action,
        "command_id": e.command_id,
        "run_id": e.run_id,
        "detail": e.detail,
    }


def page_json(
    items: Iterable[dict[str, Any]], *, limit: int, offset: int, total: int
) -> dict[str, Any]:
    return {"items": list(items), "limit": limit, "offset": offset, "total": total}


# ---- legacy routes ------------------------------------------------------------------------

LEGACY_RUNNING, LEGACY_COMPLETED, LEGACY_STOPPED = "RUNNING", "COMPLETED", "STOPPED"


def legacy_status(status: RunStatus | str) -> str:
    """The original knew only RUNNING, COMPLETED and STOPPED; exit_code tells success apart."""
    status = RunStatus(status)
    if status == RunStatus.STOPPED:
        return LEGACY_STOPPED
    return LEGACY_COMPLETED if status.is_terminal else LEGACY_RUNNING


# The first line of a legacy `result` that holds only the tail of a run's output.
LEGACY_RESULT_MARKER = (
    "[runvisor: first {skipped} bytes not shown; GET /api/v1/runs/{run_id}/output has the whole"
    " output]\n"
)


def character_start(data: bytes) -> int:
    """How many bytes to drop from the front of a cut so that UTF-8 text starts at a character:
    the continuation bytes (0b10xxxxxx) of a character cut in two, at most 3."""
    n = 0
    while n < min(len(data), 3) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def legacy_result(output: bytes | None, *, skipped: int, run_id: int) -> str:
    """`result`: the output as text; when it is a tail, `skipped` bytes before it are named."""
    # Output is arbitrary bytes; the legacy shape has only a string for it.
    text = (output or b"").decode("utf-8", errors="replace")
    if skipped:
        return LEGACY_RESULT_MARKER.format(skipped=skipped, run_id=run_id) + text
    return text


def legacy_command_json(
    c: Command,
    *,
    latest_run: Run | None = None,
    latest_output: bytes | None = None,
    latest_skipped: int = 0,
) -> dict[str, Any]:
    """The original's Command; with `latest_run`, also that run's id, status and output
    (`latest_output`, the tail after `latest_skipped` bytes)."""
    out: dict[str, Any] = {
        "id": c.id,
        "code": c.code,
        "description": c.description,
        "created_at": timestamp(c.created_at),
    }
    if latest_run is not None:
        out["last_run_id"] = latest_run.id
        out["last_run_status"] = legacy_status(latest_run.status)
        out["result"] = legacy_result(latest_output, skipped=latest_skipped, run_id=latest_run.id)
    return out


def legacy_run_json(
    r: Run, c: Command, output: bytes | None, *, skipped: int = 0
) -> dict[str, Any]:
    """The original's Run; `completed_at` holds the start time until the run ends, as there.
    `output` is the run's output after its first `skipped` bytes."""
    completed = r.finished_at or r.started_at or r.created_at
    out: dict[str, Any] = {
        "id": r.id,
        "command": legacy_command_json(c),
        "completed_at": timestamp(completed),
    }
    text = legacy_result(output, skipped=skipped, run_id=r.id)
    if text:  # the original leaves `result` out when empty (omitempty)
        out["result"] = text
    out["status"] = legacy_status(r.status)
    out["exit_code"] = r.exit_code
    return out


# ---- errors -------------------------------------------------------------------------------


def error_json(exc: RunvisorError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    details = getattr(exc, "details", None)
    if details is not None:
        body["details"] = details
    return {"error": body}


def legacy_error_json(exc: RunvisorError) -> dict[str, Any]:
    return {"error": exc.message}
