"""run_env.py: a run's environment, and the names it drops at spawn time (defence in depth)."""

# Fixtures are imported from fix_processes and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

from structlog.testing import capture_logs

from runvisor.procs.run_env import run_environment

from .fix_processes import MARKER_ENV, Procs, leak_guard, marker, procs  # noqa: F401

SERVICE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/service",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "RUNVISOR_TOKENS": "admin:secret",
    "LD_PRELOAD": "/service/own.so",  # not passed through: the service's own, not the run's
}
INJECTION = "$(echo INJECTED >&2)"


def environment(requested: dict[str, str], marker: str = "m") -> dict[str, str]:
    return run_environment(
        run_id=7,
        attempt=1,
        node_id="node-a",
        marker=marker,
        requested=requested,
        service_env=SERVICE_ENV,
    )


def test_the_run_gets_passed_through_names_its_own_and_ours_last() -> None:
    env = environment({"GREETING": "hello", "RUNVISOR_RUN_ID": "999"})
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/service",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "GREETING": "hello",
        "PYTHONUNBUFFERED": "1",
        "RUNVISOR_RUN_ID": "7",
        "RUNVISOR_ATTEMPT": "1",
        "RUNVISOR_NODE": "node-a",
        "RUNVISOR_ATTEMPT_MARKER": "m",
    }


def test_forbidden_names_in_a_stored_run_are_dropped_with_a_warning() -> None:
    requested = {
        "BASH_ENV": INJECTION,
        "LD_PRELOAD": "/tmp/evil.so",
        "PATH": "/tmp/evil",
        "HOME": "/tmp/evil",
        "LC_ALL": "zh_TW.BIG5",
        "GREETING": "hello",
    }
    with capture_logs() as logs:
        env = environment(requested)
    assert env["GREETING"] == "hello"
    assert "BASH_ENV" not in env and "LD_PRELOAD" not in env and "LC_ALL" not in env
    # The service's own values stay: the run's were dropped, not the names.
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == "/home/service"
    dropped = {e["variable"] for e in logs if e["event"] == "run variable dropped"}
    assert dropped == {"BASH_ENV", "LD_PRELOAD", "PATH", "HOME", "LC_ALL"}
    assert all(e["log_level"] == "warning" and e["run_id"] == 7 for e in logs)
    assert all(INJECTION not in str(e) for e in logs)  # values are never logged


def test_bash_env_in_a_stored_run_does_not_reach_bash(procs: Procs, marker: str) -> None:
    # The attack of the security issue, on a harmless command: bash runs BASH_ENV's command
    # substitution before the command. First without the filter, to show the test can fail.
    raw = procs.start("echo benign", env={**procs.env, "BASH_ENV": INJECTION})
    assert procs.wait_exit(raw).succeeded
    assert b"INJECTED" in raw.output()
    env = environment({"BASH_ENV": INJECTION, "GREETING": "hello"}, marker=marker)
    assert env[MARKER_ENV] == marker
    filtered = procs.start('echo benign "$GREETING"', env=env)
    assert procs.wait_exit(filtered).succeeded
    assert filtered.output() == b"benign hello\n"
