"""The `runvisor` command: `migrate`, and `serve` with the zero-config embedded default."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from runvisor.store.migrate import migration_files
from tests.fix_service import free_port, processes_with_env, wait_until
from tests.fix_stores import drop_database, with_dbname


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    name = f"runvisor_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(pg_server_url, name)
    drop_database(pg_server_url, name)


def test_migrate_applies_the_schema_once(empty_database: str, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "RUNVISOR_DATABASE_URL": empty_database,
        "RUNVISOR_REDIS_URL": "redis://127.0.0.1:1/0",
        "RUNVISOR_DATA_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "runvisor", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    shipped = [name for _, name, _ in migration_files()]  # 0001_initial.sql first
    assert shipped[0] == "0001_initial.sql"
    assert f"applied {len(shipped)} migration(s): {', '.join(shipped)}" in first.stdout
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "applied 0 migration(s)" in second.stdout
    with psycopg.connect(empty_database) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert {"commands", "runs", "run_attempts", "run_output", "audit"} <= tables


def embedded_processes(data_dir: Path) -> list[int]:
    """Server processes (postgres, valkey) whose command line or cwd lies in `data_dir`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if str(data_dir) in cmdline or cwd.startswith(str(data_dir)):
            found.append(int(name))
    return found


def test_serve_with_no_urls_runs_on_embedded_servers_and_keeps_history(tmp_path: Path) -> None:
    # Not under pytest's tmp_path: the embedded PostgreSQL may run as another user (see
    # fix_stores.embedded_stores_dir).
    data_dir = Path(tempfile.mkdtemp(prefix="runvisor-embedded-"))
    port = free_port()
    node = f"embedded-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "RUNVISOR_DATA_DIR": str(data_dir),
        "RUNVISOR_PORT": str(port),
        "RUNVISOR_NODE_ID": node,
        "RUNVISOR_LOG_FORMAT": "json",
    }
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"

    def serve() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runvisor", "serve"], env=env, stdout=out, stderr=out
            )

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(base + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 60, "the embedded node to answer /healthz", poll_s=0.2)
        return proc

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]

    proc = serve()
    try:
        token_file = data_dir / "admin.token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert requests.get(base + "/readyz", timeout=5).json()["stores"] == {
            "postgres": "ok",
            "redis": "ok",
        }
        assert requests.get(base + "/api/v1/commands", timeout=5).status_code == 401
        command = requests.post(
            base + "/api/v1/commands", json={"code": "echo embedded"}, headers=headers, timeout=5
        ).json()
        run = requests.post(
            f"{base}/api/v1/commands/{command['id']}/runs", headers=headers, timeout=5
        ).json()

        def finished() -> dict | None:
            current = requests.get(
                f"{base}/api/v1/runs/{run['id']}", headers=headers, timeout=5
            ).json()
            return current if current["status"] == "succeeded" else None

        wait_until(finished, 20, "the run to succeed")
        stop(proc)
        assert not embedded_processes(data_dir), "embedded servers must stop with the service"

        proc = serve()
        output = requests.get(f"{base}/api/v1/runs/{run['id']}/output", headers=headers, timeout=5)
        assert output.content == b"embedded\n"
    finally:
        if proc.poll() is None:
            stop(proc)
        for pid in processes_with_env(f"RUNVISOR_NODE={node}") + embedded_processes(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_sigterm_during_start_up_stops_what_already_started(tmp_path: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="runvisor-startup-"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "RUNVISOR_DATA_DIR": str(data_dir),
        "RUNVISOR_PORT": str(free_port()),
        "RUNVISOR_TOKENS": "admin:x",
        # Unreachable: start-up waits for it, after the embedded Valkey has started.
        "RUNVISOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runvisor", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        wait_until(lambda: "waiting for PostgreSQL" in log.read_text(), 30, "start-up to wait")
        assert embedded_processes(data_dir), "the embedded Valkey should be running by now"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not embedded_processes(data_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in embedded_processes(data_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)
