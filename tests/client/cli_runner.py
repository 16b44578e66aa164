"""Running `python -m runvisor …` as a real subprocess against a real node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fix_service import ADMIN, Service


def cli_env(
    service: Service | None, *, token: str | None = ADMIN, data_dir: Path | None = None
) -> dict[str, str]:
    """A clean environment: the node's URL and `token`; the data dir is an empty one unless
    given, so no admin.token of the machine is picked up by accident."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "RUNVISOR_DATA_DIR": str(data_dir or Path("/nonexistent/runvisor-cli-test")),
    }
    if service is not None:
        env["RUNVISOR_URL"] = service.api.base
    if token is not None:
        env["RUNVISOR_TOKEN"] = token
    return env


def cli(
    service: Service | None,
    *args: str,
    token: str | None = ADMIN,
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runvisor", *args],
        env=env if env is not None else cli_env(service, token=token),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def cli_bytes(
    service: Service, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "runvisor", *args],
        env=cli_env(service),
        capture_output=True,
        timeout=timeout_s,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exactly one line on stderr, `runvisor: …`, and no traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runvisor: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
