"""A real runvisor node in a subprocess, driven over real HTTP; cleaned up after each test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from runvisor.procs.cgroups import cgroup2_mount, own_cgroup
from tests.polling import wait_until

ADMIN, OPERATOR, VIEWER = "admin-secret-token", "operator-secret-token", "viewer-secret-token"
TOKENS = f"admin:{ADMIN},operator:{OPERATOR},viewer:{VIEWER}"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds exactly `entry` (NAME=value), read from /proc."""
    found, needle = [], entry.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


@dataclass
class Api:
    base: str
    token: str = ADMIN
    session: requests.Session = field(default_factory=requests.Session)

    def request(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> requests.Response:
        headers = kw.pop("headers", {})
        token = self.token if token is None else token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        return self.session.request(method, self.base + path, headers=headers, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    # Conveniences for the common flow

    def create_command(self, code: str, **fields: Any) -> dict[str, Any]:
        response = self.post("/api/v1/commands", json={"code": code, **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def start_run(self, command_id: int, **fields: Any) -> dict[str, Any]:
        response = self.post(f"/api/v1/commands/{command_id}/runs", json=fields)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def run_code(self, code: str, **fields: Any) -> dict[str, Any]:
        return self.start_run(self.create_command(code)["id"], **fields)

    def run(self, run_id: int) -> dict[str, Any]:
        response = self.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def output(self, run_id: int) -> bytes:
        response = self.get(f"/api/v1/runs/{run_id}/output")
        assert response.status_code == 200, response.text
        return response.content

    def wait_status(
        self, run_id: int, statuses: set[str] | str, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else statuses

        def check() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in wanted else None

        return dict(wait_until(check, timeout_s, f"run {run_id} to be {sorted(wanted)}"))

    def wait_finished(self, run_id: int, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.wait_status(
            run_id, {"succeeded", "failed", "stopped", "timed_out", "lost"}, timeout_s
        )


class Service:
    """`runvisor serve` as a child process, with its own node id, data dir and Redis prefix."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        redis_prefix: str,
        data_dir: Path,
        node_id: str,
        extra_env: dict[str, str | None] | None = None,
    ) -> None:
        self.port = free_port()
        self.node_id = node_id
        self.data_dir = data_dir
        self.log_path = data_dir / f"service-{node_id}.log"
        self.env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "RUNVISOR_DATABASE_URL": database_url,
            "RUNVISOR_REDIS_URL": redis_url,
            "RUNVISOR_REDIS_PREFIX": redis_prefix,
            "RUNVISOR_DATA_DIR": str(data_dir),
            "RUNVISOR_PORT": str(self.port),
            "RUNVISOR_NODE_ID": node_id,
            "RUNVISOR_TOKENS": TOKENS,
            "RUNVISOR_LOG_FORMAT": "json",
            "RUNVISOR_FLUSH_INTERVAL_S": "0.2",
        }
        # A value of None in extra_env unsets that variable.
        for name, value in (extra_env or {}).items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = Api(f"http://127.0.0.1:{self.port}")

    def start(self) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115  # kept open by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runvisor", "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(self._healthy, START_TIMEOUT_S, f"node {self.node_id} to answer /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return requests.get(self.api.base + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as an operator (or docker) stops the service."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not stop on SIGTERM:\n{self.log_tail()}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def run_processes(self) -> list[int]:
        return processes_with_env(f"RUNVISOR_NODE={self.node_id}")


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def service_factory(
    database_url: str,
    redis_server_url: str,
    redis_prefix: str,
    data_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Service]]:
    """Start nodes of one test; afterwards stop them and fail if a run process is left."""
    started: list[Service] = []

    def make(
        node_id: str | None = None,
        *,
        db_url: str | None = None,
        redis_url: str | None = None,
        **extra_env: str | None,
    ) -> Service:
        node = node_id or f"node-{len(started) + 1}-{os.getpid()}-{id(request) % 10000}"
        service = Service(
            database_url=db_url or database_url,
            redis_url=redis_url or redis_server_url,
            redis_prefix=redis_prefix,
            data_dir=data_dir,
            node_id=node,
            extra_env=extra_env,
        )
        started.append(service)
        return service.start()

    yield make
    leftovers: dict[str, list[int]] = {}
    for service in started:
        stop_active_runs(service)
    for service in started:
        service.stop()
    for service in started:
        pids = service.run_processes()
        if pids:
            leftovers[service.node_id] = pids
            kill_pids(pids)
        remove_node_cgroups(service.node_id)
    assert not leftovers, f"run processes left behind: {leftovers}"


def remove_node_cgroups(node_id: str) -> None:
    """A node removes its cgroup directory when it stops; one a test killed cannot. Test node ids
    are unique, so each would stay behind on the machine: remove what is empty now."""
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        return
    root = mount / own.lstrip("/") / f"runvisor-{node_id}"
    for path in [*root.glob("run-*"), root] if root.is_dir() else []:
        with contextlib.suppress(OSError):  # not empty: a run still in it fails the test above
            path.rmdir()


def stop_active_runs(service: Service) -> None:
    """Tests that end with runs still going stop them here, and wait until they have ended."""
    if service.proc is None or service.proc.poll() is not None:
        return
    try:
        page = service.api.get("/api/v1/runs?status=active&limit=1000").json()
    except requests.RequestException:
        return
    for run in page.get("items", []):
        service.api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
    for run in page.get("items", []):
        service.api.wait_finished(run["id"], timeout_s=15)


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


@pytest.fixture
def api(service: Service) -> Api:
    return service.api
