"""Restart policy arithmetic, checked with Hypothesis."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from runvisor.models import AttemptEndReason, RestartPolicy, RestartPolicyKind, RunStatus
from runvisor.policy import (
    JITTER,
    AttemptSummary,
    backoff_delay,
    consecutive_unstable,
    decide,
)

policies = st.builds(
    RestartPolicy,
    policy=st.sampled_from(list(RestartPolicyKind)),
    max_restarts=st.integers(0, 20),
    window_s=st.floats(0.1, 3600),
    backoff_s=st.floats(0, 60),
    backoff_max_s=st.floats(0, 600),
).filter(lambda p: p.backoff_max_s >= p.backoff_s)


@given(policies, st.integers(1, 200), st.integers(0, 2**32))
def test_backoff_is_within_jitter_of_the_exponential_and_never_over_the_cap(
    policy: RestartPolicy, n: int, seed: int
) -> None:
    delay = backoff_delay(policy, n, random.Random(seed))
    ideal = min(policy.backoff_s * 2.0 ** min(n - 1, 60), policy.backoff_max_s)
    assert 0 <= delay <= policy.backoff_max_s
    assert ideal * (1 - JITTER) - 1e-9 <= delay <= ideal * (1 + JITTER) + 1e-9


@given(st.floats(0.01, 10), st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_grows_until_the_cap(base: float, n: int, seed: int) -> None:
    policy = RestartPolicy(RestartPolicyKind.ALWAYS, backoff_s=base, backoff_max_s=base * 1000)
    rng = random.Random(seed)
    # With +-10% jitter a doubling always wins: 2 * 0.9 > 1.1.
    if base * 2.0**n <= policy.backoff_max_s:
        assert backoff_delay(policy, n + 1, rng) > backoff_delay(policy, n, rng)


def attempts_at(times: list[float], duration: float = 0.1) -> list[AttemptSummary]:
    return [AttemptSummary(t, t + duration, False) for t in times]


@given(policies, st.lists(st.floats(0, 1000), min_size=1, max_size=30).map(sorted))
@settings(max_examples=300)
def test_never_more_than_max_restarts_within_the_window(
    policy: RestartPolicy, starts: list[float]
) -> None:
    now = starts[-1] + 0.1
    decision = decide(
        policy,
        reason=AttemptEndReason.EXITED,
        succeeded=False,
        attempts=attempts_at(starts),
        now=now,
    )
    restarts_in_window = sum(1 for t in starts[1:] if now - t < policy.window_s)
    if policy.policy is RestartPolicyKind.NEVER:
        assert decision.status is RunStatus.FAILED and decision.restart_delay_s is None
    elif restarts_in_window >= policy.max_restarts:
        assert decision.status is RunStatus.FAILED
        assert decision.reason is not None and "intensity" in decision.reason
    else:
        assert decision.status is RunStatus.RESTARTING and decision.restart_delay_s is not None


@given(policies, st.sampled_from(list(AttemptEndReason)), st.booleans())
def test_an_operator_stop_is_never_restarted(
    policy: RestartPolicy, _reason: AttemptEndReason, succeeded: bool
) -> None:
    decision = decide(
        policy,
        reason=AttemptEndReason.STOPPED,
        succeeded=succeeded,
        attempts=attempts_at([0.0]),
        now=1.0,
    )
    assert decision.status is RunStatus.STOPPED and decision.restart_delay_s is None


@given(policies)
def test_on_failure_keeps_a_success(policy: RestartPolicy) -> None:
    decision = decide(
        policy,
        reason=AttemptEndReason.EXITED,
        succeeded=True,
        attempts=[AttemptSummary(0.0, 1.0, True)],
        now=1.0,
    )
    if policy.policy is RestartPolicyKind.ALWAYS and policy.max_restarts > 0:
        assert decision.status is RunStatus.RESTARTING
    elif policy.policy is not RestartPolicyKind.ALWAYS:
        assert decision.status is RunStatus.SUCCEEDED


@given(st.lists(st.floats(0, 100), min_size=1, max_size=20), st.floats(1, 50))
def test_a_stable_attempt_resets_the_backoff(durations: list[float], window: float) -> None:
    policy = RestartPolicy(RestartPolicyKind.ALWAYS, window_s=window)
    attempts, t = [], 0.0
    for d in durations:
        attempts.append(AttemptSummary(t, t + d, False))
        t += d + 1
    count = consecutive_unstable(policy, attempts)
    tail = [a.finished_at - a.started_at for a in reversed(attempts)]
    expected = next((i for i, d in enumerate(tail) if d >= window), len(tail))
    assert count == expected


def test_final_statuses_without_restart() -> None:
    never = RestartPolicy()
    cases = {
        (AttemptEndReason.EXITED, True): RunStatus.SUCCEEDED,
        (AttemptEndReason.EXITED, False): RunStatus.FAILED,
        (AttemptEndReason.TIMED_OUT, False): RunStatus.TIMED_OUT,
        (AttemptEndReason.STUCK, False): RunStatus.FAILED,
        (AttemptEndReason.LOST, False): RunStatus.LOST,
        (AttemptEndReason.ACTOR_FAILED, False): RunStatus.FAILED,
    }
    for (reason, ok), status in cases.items():
        decision = decide(never, reason=reason, succeeded=ok, attempts=attempts_at([0.0]), now=1)
        assert decision.status is status, (reason, decision)
