"""Which of a run's overrides loosen what the admin set on its command.

An operator may start runs and tighten their bounds (a shorter timeout, fewer restarts), but
not undo an admin's: a run that lasts a year, or restarts forever, reaches further than the
operator role allows. Only an admin may loosen (runvisor.store.history.History.create_run).
"""

from __future__ import annotations

from runvisor.errors import Unprocessable
from runvisor.models import Command, RestartPolicy, RestartPolicyKind, RunSpec

_POLICY_RANK = {
    RestartPolicyKind.NEVER: 0,
    RestartPolicyKind.ON_FAILURE: 1,
    RestartPolicyKind.ALWAYS: 2,
}


def loosened(command: Command, spec: RunSpec) -> list[str]:
    """One line per override of `spec` that loosens `command`'s settings (empty: none)."""
    found: list[str] = []
    for name, mine, theirs in (
        ("timeout_s", spec.timeout_s, command.timeout_s),
        ("stuck_after_s", spec.stuck_after_s, command.stuck_after_s),
    ):
        if mine is not None and theirs is not None and mine > theirs:
            found.append(f"{name}: {mine:g} is above the command's {theirs:g}")
    if spec.restart is not None:
        found += _restart_loosened(RestartPolicy.from_json(command.restart), spec.restart)
    return found


def _restart_loosened(command: RestartPolicy, run: RestartPolicy) -> list[str]:
    if run.policy is RestartPolicyKind.NEVER:
        return []  # no restart at all: nothing to loosen
    found: list[str] = []
    if _POLICY_RANK[run.policy] > _POLICY_RANK[command.policy]:
        found.append(
            f"restart.policy: {run.policy} restarts more than the command's {command.policy}"
        )
    if command.policy is RestartPolicyKind.NEVER:
        return found  # the command restarts nothing: any restart loosens it, said above
    for name, more_restarts in (
        ("max_restarts", run.max_restarts > command.max_restarts),
        # A shorter window lets the same number of restarts happen more often.
        ("window_s", run.window_s < command.window_s),
        ("backoff_s", run.backoff_s < command.backoff_s),
        ("backoff_max_s", run.backoff_max_s < command.backoff_max_s),
    ):
        if more_restarts:
            found.append(
                f"restart.{name}: {getattr(run, name):g} allows more restarts than the "
                f"command's {getattr(command, name):g}"
            )
    return found


def undeclared_env(command_id: int, names: list[str]) -> Unprocessable:
    """The 422 for variables the command does not declare, shaped as schemas.validate's."""
    message = f"not declared by command {command_id}; a run may set only the variables its"
    message += " command declares"
    details = [
        {"field": f"env.{name}", "message": message, "type": "not_declared"} for name in names
    ]
    shown = "; ".join(f"{d['field']}: {d['message']}" for d in details[:20])
    if len(details) > 20:
        shown += f"; and {len(details) - 20} more"
    problem = Unprocessable(shown)
    problem.details = details  # type: ignore[attr-defined]  # read by the error middleware
    return problem
