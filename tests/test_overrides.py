"""overrides.loosened: which run overrides undo an admin's bounds on the command."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runvisor.models import Command, RestartPolicy, RestartPolicyKind, RunSpec
from runvisor.overrides import loosened

ON_FAILURE = RestartPolicy(RestartPolicyKind.ON_FAILURE, max_restarts=3, window_s=60.0)


def command(
    timeout_s: float | None = 10.0,
    stuck_after_s: float | None = None,
    restart: RestartPolicy = ON_FAILURE,
) -> Command:
    return Command(
        id=1,
        name=None,
        code="true",
        description="",
        created_at=datetime.now(UTC),
        timeout_s=timeout_s,
        stuck_after_s=stuck_after_s,
        restart=restart.to_json(),
        max_output_bytes=1024,
        env={},
        limits={},
    )


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec(),
        RunSpec(timeout_s=5.0),
        RunSpec(timeout_s=10.0),
        RunSpec(stuck_after_s=3.0),  # the command has none: any value tightens
        RunSpec(restart=RestartPolicy(RestartPolicyKind.NEVER)),
        RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, max_restarts=1, window_s=600)),
        RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, backoff_s=5, backoff_max_s=90)),
    ],
)
def test_tightening_or_keeping_is_not_loosening(spec: RunSpec) -> None:
    assert loosened(command(), spec) == []


@pytest.mark.parametrize(
    "spec, field",
    [
        (RunSpec(timeout_s=31_536_000), "timeout_s"),
        (RunSpec(restart=RestartPolicy(RestartPolicyKind.ALWAYS)), "restart.policy"),
        (
            RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, max_restarts=1000)),
            "restart.max_restarts",
        ),
        (
            RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, window_s=1)),
            "restart.window_s",
        ),
        (
            RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, backoff_s=0)),
            "restart.backoff_s",
        ),
        (
            RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE, backoff_max_s=1)),
            "restart.backoff_max_s",
        ),
    ],
)
def test_loosening_is_named(spec: RunSpec, field: str) -> None:
    [line] = loosened(command(), spec)
    assert line.startswith(field + ":")


def test_any_restart_of_a_command_that_never_restarts_loosens_it() -> None:
    never = command(restart=RestartPolicy())
    found = loosened(never, RunSpec(restart=RestartPolicy(RestartPolicyKind.ON_FAILURE)))
    assert [line.split(":")[0] for line in found] == ["restart.policy"]


def test_a_timeout_on_a_command_without_one_is_not_loosening() -> None:
    assert loosened(command(timeout_s=None), RunSpec(timeout_s=99.0)) == []
