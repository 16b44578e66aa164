"""Restart policy arithmetic: what happens after an attempt ends. Pure functions, no I/O.

Backoff is exponential with jitter and a cap, and resets after a stable attempt; an intensity
limit (at most `max_restarts` restarts within `window_s`, as in Erlang/OTP) ends the run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from runvisor.models import AttemptEndReason, RestartPolicy, RestartPolicyKind, Run, RunStatus

JITTER = 0.1  # +-10%: spreads restarts of many runs, while the gaps still grow


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """One finished attempt as the policy sees it (times in seconds since the epoch)."""

    started_at: float
    finished_at: float
    succeeded: bool


@dataclass(frozen=True, slots=True)
class Decision:
    status: RunStatus  # a terminal status, or RESTARTING
    reason: str | None
    restart_delay_s: float | None = None


def final_status(reason: AttemptEndReason, succeeded: bool) -> RunStatus:
    if reason in (AttemptEndReason.STOPPED, AttemptEndReason.OUTPUT_LIMIT):
        return RunStatus.STOPPED
    if reason is AttemptEndReason.TIMED_OUT:
        return RunStatus.TIMED_OUT
    if reason is AttemptEndReason.LOST:
        return RunStatus.LOST
    return RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED


def backoff_delay(
    policy: RestartPolicy, consecutive_failures: int, rng: random.Random | None = None
) -> float:
    """backoff_s * 2**(n-1), capped at backoff_max_s, with +-JITTER; n >= 1."""
    exponent = max(consecutive_failures - 1, 0)
    base = policy.backoff_s * (2.0 ** min(exponent, 60))
    capped = min(base, policy.backoff_max_s)
    jitter = (rng or random).uniform(1.0 - JITTER, 1.0 + JITTER)
    return min(capped * jitter, policy.backoff_max_s) if capped > 0 else 0.0


def consecutive_unstable(policy: RestartPolicy, attempts: Sequence[AttemptSummary]) -> int:
    """How many attempts in a row, counting back from the last, ended before the stable period.

    An attempt that ran for `window_s` or more was stable: the backoff starts over after it.
    """
    count = 0
    for attempt in reversed(attempts):
        if attempt.finished_at - attempt.started_at >= policy.window_s:
            break
        count += 1
    return count


def restarts_in_window(policy: RestartPolicy, restart_times: Sequence[float], now: float) -> int:
    return sum(1 for t in restart_times if now - t < policy.window_s)


def decide(
    policy: RestartPolicy,
    *,
    reason: AttemptEndReason,
    succeeded: bool,
    attempts: Sequence[AttemptSummary],
    now: float,
    rng: random.Random | None = None,
) -> Decision:
    """What to do after the last of `attempts` ended (`attempts` includes it, oldest first)."""
    outcome = final_status(reason, succeeded)
    stopped = reason in (AttemptEndReason.STOPPED, AttemptEndReason.OUTPUT_LIMIT)
    wants_restart = not stopped and (
        policy.policy is RestartPolicyKind.ALWAYS
        or (policy.policy is RestartPolicyKind.ON_FAILURE and not succeeded)
    )
    if not wants_restart:
        return Decision(outcome, None if succeeded and not stopped else str(reason))
    # Every attempt after the first began with a restart: its start time is that restart's.
    restart_times = [a.started_at for a in attempts[1:]]
    recent = restarts_in_window(policy, restart_times, now)
    if recent >= policy.max_restarts:
        return Decision(
            RunStatus.FAILED,
            f"restart intensity reached: {recent} restart(s) within {policy.window_s:g} s"
            f" (max_restarts {policy.max_restarts}); last attempt ended: {reason}",
        )
    delay = backoff_delay(policy, consecutive_unstable(policy, attempts), rng)
    return Decision(RunStatus.RESTARTING, str(reason), restart_delay_s=delay)


def attempt_history(
    run: Run, *, started_at: float, ended_at: float, succeeded: bool
) -> list[AttemptSummary]:
    """The run's earlier attempts plus the one (run.attempt) that just ended."""
    history = [
        AttemptSummary(a.started_at.timestamp(), (a.finished_at or a.started_at).timestamp(), False)
        for a in run.attempts
        if a.attempt < run.attempt
    ]
    history.append(AttemptSummary(started_at, ended_at, succeeded))
    return history
