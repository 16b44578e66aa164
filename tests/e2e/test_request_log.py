"""The request log: a line per request that changes something, is refused or fails, at info;
a read that succeeded (clients poll) at debug, seen with RUNVISOR_LOG_LEVEL=debug."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from tests.fix_service import Service
from tests.polling import wait_until


def request_lines(service: Service) -> dict[str, dict[str, Any]]:
    """The node's request lines by request id."""
    lines = {}
    for line in service.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "request":
            lines[record["request_id"]] = record
    return lines


def send_requests(service: Service) -> dict[str, str]:
    """A read that succeeds, a change, and a read refused (404): request id -> which."""
    ids = {kind: uuid.uuid4().hex[:16] for kind in ("read", "change", "missing")}
    api = service.api
    ok = api.get("/api/v1/commands", headers={"X-Request-Id": ids["read"]})
    made = api.post(
        "/api/v1/commands", json={"code": "true"}, headers={"X-Request-Id": ids["change"]}
    )
    missing = api.get("/api/v1/runs/999999", headers={"X-Request-Id": ids["missing"]})
    assert (ok.status_code, made.status_code, missing.status_code) == (200, 201, 404)
    return {request_id: kind for kind, request_id in ids.items()}


def levels_logged(service: Service, sent: dict[str, str], expected: int) -> dict[str, str]:
    """Kind -> level of the request lines of `sent`, once `expected` of them are in the log."""

    def logged() -> dict[str, str] | None:
        lines = request_lines(service)
        found = {kind: lines[rid]["level"] for rid, kind in sent.items() if rid in lines}
        return found if len(found) >= expected else None

    found: dict[str, str] = wait_until(logged, 10, f"{expected} request lines")
    return found


def test_reads_that_succeed_are_logged_at_debug_the_rest_at_info(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()
    sent = send_requests(service)
    assert levels_logged(service, sent, 2) == {"change": "info", "missing": "info"}

    verbose = service_factory(RUNVISOR_LOG_LEVEL="debug")
    sent = send_requests(verbose)
    assert levels_logged(verbose, sent, 3) == {
        "read": "debug",
        "change": "info",
        "missing": "info",
    }
