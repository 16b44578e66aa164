"""Run.current_attempt: the row of the run's current attempt among those read with it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from runvisor.models import Attempt, Run, RunStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def attempt(number: int) -> Attempt:
    return Attempt(
        run_id=1,
        attempt=number,
        node="n",
        pid=100 + number,
        pid_start_ticks=1,
        process_marker=f"marker-{number}",
        boot_id=None,
        started_at=NOW,
        finished_at=None,
        exit_code=None,
        signal=None,
        reason=None,
        output_offset=0,
        leftovers_killed=0,
    )


def run(current: int, attempts: list[Attempt]) -> Run:
    return Run(
        id=1,
        command_id=1,
        code="true",
        env={},
        status=RunStatus.RUNNING,
        exit_code=None,
        signal=None,
        reason=None,
        node="n",
        pid=None,
        attempt=current,
        restart_count=0,
        next_attempt_at=None,
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        output_bytes=0,
        output_truncated=False,
        stop_requested_by=None,
        stop_requested_at=None,
        stop_grace_s=None,
        timeout_s=None,
        stuck_after_s=None,
        restart={},
        max_output_bytes=1000,
        limits={},
        attempts=attempts,
    )


def test_the_current_attempt_is_the_one_numbered_by_the_run_whatever_the_order() -> None:
    attempts = [attempt(3), attempt(1), attempt(2)]
    assert run(2, attempts).current_attempt is attempts[2]
    assert run(3, attempts).current_attempt is attempts[0]


def test_no_current_attempt_when_its_row_was_not_read_with_the_run() -> None:
    assert run(0, []).current_attempt is None
    assert run(4, [attempt(1), attempt(2)]).current_attempt is None
    assert dataclasses.replace(run(1, [attempt(1)]), attempts=[]).current_attempt is None
