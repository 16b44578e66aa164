"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

check-jsonschema against the Compose Specification's schema stands in for
`docker compose config`; the rest asserts what the deployment relies on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runvisor.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NODES = {"runvisor-1": ("node-1", "8080:8080"), "runvisor-2": ("node-2", "8081:8080")}


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:  # check-jsonschema brings ruamel.yaml
        from ruamel.yaml import YAML

        return YAML(typ="safe").load(path.read_text())
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, enough for this file."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg or ""
        raise KeyError(f"{name}: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def test_compose_file_validates_against_the_compose_spec() -> None:
    pytest.importorskip(
        "check_jsonschema", reason="check-jsonschema is not installed (pip install '.[test]')"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_backing_services_are_healthchecked_and_persistent(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", *NODES}

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    redis = services["redis"]
    assert redis["image"].split(":")[0] in ("redis", "valkey/valkey")
    assert "valkey-cli ping" in redis["healthcheck"]["test"][-1]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][-1]  # it has a password
    assert "--requirepass" in redis["command"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])

    named = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in named, f"{volume} is not a named volume"


@pytest.mark.parametrize("name", sorted(NODES))
def test_runvisor_nodes(compose: dict[str, Any], name: str) -> None:
    node_id, port = NODES[name]
    node = compose["services"][name]
    assert node["build"] == "."
    assert node["init"] is True
    assert node["stop_grace_period"] == "30s"
    assert node["ports"] == [port]
    assert node["volumes"] == [f"{name}-data:/var/lib/runvisor"]
    assert node["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    probe = node["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "python"] and "http://127.0.0.1:8080/healthz" in probe[-1]

    env = node["environment"]
    assert env["RUNVISOR_NODE_ID"] == node_id
    assert env["RUNVISOR_HOST"] == "0.0.0.0"
    assert env["RUNVISOR_DATA_DIR"] == "/var/lib/runvisor"
    assert env["RUNVISOR_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["RUNVISOR_DATABASE_URL"]
    # Runs share the compose network: both stores need a password, none has a default.
    assert env["RUNVISOR_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert env["RUNVISOR_REDIS_URL"].endswith("@redis:6379/0")
    assert "${POSTGRES_PASSWORD:?" in env["RUNVISOR_DATABASE_URL"]
    assert env["RUNVISOR_TOKENS"].startswith("${RUNVISOR_TOKENS:?")

    # Compose refuses to start without RUNVISOR_TOKENS...
    with pytest.raises(KeyError, match="set RUNVISOR_TOKENS"):
        _interpolate(env["RUNVISOR_TOKENS"], {})
    # ...and with it, runvisor accepts every setting the file gives it.
    given = {
        "RUNVISOR_TOKENS": "admin:" + "s" * 32,
        "POSTGRES_PASSWORD": "p" * 16,
        "REDIS_PASSWORD": "r" * 16,
    }
    settings = load_settings({k: _interpolate(str(v), given) for k, v in env.items()})
    assert settings.node_id == node_id
    assert settings.port == 8080 and settings.host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/runvisor"
    assert settings.tokens == given["RUNVISOR_TOKENS"]


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"apt-get install [^\n]*\bbash\b[^\n]*\bprocps\b[^\n]*\butil-linux", text)
    assert "pip install --no-cache-dir ." in text
    # The service is root in its container so that runs, as the unprivileged user runvisor,
    # cannot reach it (RUNVISOR_RUN_AS).
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "root"
    assert re.search(r"useradd [^\n]*--uid 10001", text)
    assert re.search(r"^\s+RUNVISOR_RUN_AS=runvisor$", text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["runvisor"\]$', text, re.M)
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*urllib\.request.*/healthz", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data"} <= set(ignored)
