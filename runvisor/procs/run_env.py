"""The environment a run gets: a clean one, never the service's own (it holds secrets)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runvisor.env_names import forbidden_reason
from runvisor.logs import get_logger
from runvisor.procs.run_user import RunUser

log = get_logger(__name__)

# Taken from the service's environment: harmless, and needed for bash to behave normally.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_environment(
    *,
    run_id: int,
    attempt: int,
    node_id: str,
    marker: str,
    requested: Mapping[str, str],
    service_env: Mapping[str, str] | None = None,
    run_user: RunUser | None = None,
    work_dir: Path | None = None,
) -> dict[str, str]:
    source = os.environ if service_env is None else service_env
    env = {name: source[name] for name in PASSED_THROUGH if name in source}
    env.setdefault("PATH", DEFAULT_PATH)
    if run_user is not None and run_user.switches:
        # Not the service's HOME (root's, say): the run user could not write there anyway.
        # Its own working directory is the one place it may write for sure.
        env["USER"] = env["LOGNAME"] = run_user.name
        env["HOME"] = str(work_dir) if work_dir is not None else (run_user.home or "/")
    for name, value in requested.items():
        # The HTTP layer refuses these names; a run stored before that rule may still hold one.
        reason = forbidden_reason(name)
        if reason is not None:
            log.warning("run variable dropped", run_id=run_id, variable=name, reason=reason)
            continue
        env[name] = value
    # Set last, so a request cannot forge them (the HTTP layer also rejects RUNVISOR_* names).
    env["PYTHONUNBUFFERED"] = "1"
    env["RUNVISOR_RUN_ID"] = str(run_id)
    env["RUNVISOR_ATTEMPT"] = str(attempt)
    env["RUNVISOR_NODE"] = node_id
    env["RUNVISOR_ATTEMPT_MARKER"] = marker
    return env
