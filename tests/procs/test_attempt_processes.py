"""AttemptProcesses: the safety net's look for an exit the exit watcher missed."""
# ruff: noqa: F811

from __future__ import annotations

import os
import signal

import pytest

from runvisor.procs import attempt_processes
from runvisor.procs.attempt_processes import AttemptProcesses

from .fix_processes import Procs, leak_guard, marker, procs  # noqa: F401


def test_the_safety_net_looks_at_proc_at_most_once_a_period(
    procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempt = procs.start("sleep 1000")
    tracked = AttemptProcesses(marker=procs.marker, status_path=attempt.status, adopted=False)
    assert not tracked.leader_seen_gone()  # no identity yet: nothing to look at
    tracked.identity = attempt.identity
    assert not tracked.leader_seen_gone()  # a look: alive
    os.killpg(attempt.pid, signal.SIGKILL)
    procs.wait_exit(attempt)
    assert not tracked.leader_seen_gone()  # gone, but the next look is not due yet
    monkeypatch.setattr(attempt_processes, "LIVENESS_LOOK_S", 0.0)
    tracked._next_liveness_look = 0.0  # the period is over
    assert tracked.leader_seen_gone()
    assert tracked.leader_seen_gone()  # with no period, every call looks
