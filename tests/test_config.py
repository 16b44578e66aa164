"""Settings: read from RUNVISOR_*; a bad one stops start-up with one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runvisor.config import Settings, load_settings
from runvisor.errors import SettingsError


def serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`runvisor serve` with exactly `env`, expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "runvisor", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.flush_interval_s == 0.5 and settings.default_grace_s == 10.0
    assert settings.database_url is None and settings.redis_url is None
    assert settings.tokens is None and settings.max_running == 0
    assert settings.legacy_result_bytes == 1048576
    assert settings.max_output_streams == 64 and settings.max_output_streams_per_token == 16
    assert settings.output_write_timeout_s == 30.0


def test_environment_and_flags() -> None:
    env = {
        "RUNVISOR_PORT": "9000",
        "RUNVISOR_HOST": "0.0.0.0",
        "RUNVISOR_FLUSH_INTERVAL_S": "0.25",
        "RUNVISOR_DATABASE_URL": "postgresql://u@db/x",
        "RUNVISOR_REDIS_URL": "redis://r:6379/1",
        "RUNVISOR_LOG_FORMAT": "JSON",
        "RUNVISOR_DATA_DIR": "/tmp/rv",
        "RUNVISOR_MAX_RUNNING": "4",
        "RUNVISOR_LEGACY_RESULT_BYTES": "4096",
        "RUNVISOR_TEST_HOOKS": "yes",
        "RUNVISOR_MAX_OUTPUT_STREAMS": "100",
        "RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN": "5",
        "RUNVISOR_OUTPUT_WRITE_TIMEOUT_S": "2.5",
    }
    settings = load_settings(env, port=9100, node_id=None)
    assert settings.port == 9100  # a flag wins over the environment
    assert settings.host == "0.0.0.0" and settings.flush_interval_s == 0.25
    assert settings.log_format == "json" and settings.data_dir == Path("/tmp/rv")
    assert settings.max_running == 4 and settings.test_hooks is True
    assert settings.legacy_result_bytes == 4096
    assert settings.max_output_streams == 100 and settings.max_output_streams_per_token == 5
    assert settings.output_write_timeout_s == 2.5
    assert settings.spool_dir == Path("/tmp/rv/spool")


def test_libpq_connection_strings_are_accepted() -> None:
    settings = load_settings({"RUNVISOR_DATABASE_URL": "host=/tmp dbname=x user=postgres"})
    assert settings.database_url == "host=/tmp dbname=x user=postgres"


@pytest.mark.parametrize(
    "name,value",
    [
        ("RUNVISOR_PORT", "eighty"),
        ("RUNVISOR_PORT", "70000"),
        ("RUNVISOR_FLUSH_INTERVAL_S", "0"),
        ("RUNVISOR_FLUSH_INTERVAL_S", "nan"),
        ("RUNVISOR_LOG_FORMAT", "xml"),
        ("RUNVISOR_DATABASE_URL", "mysql://x"),
        ("RUNVISOR_REDIS_URL", "http://x"),
        ("RUNVISOR_NODE_ID", "bad node"),
        ("RUNVISOR_MAX_RUNNING", "-1"),
        ("RUNVISOR_TEST_HOOKS", "perhaps"),
        ("RUNVISOR_REDIS_PREFIX", "a b"),
        ("RUNVISOR_MAX_CODE_BYTES", "200000"),
        ("RUNVISOR_LEGACY_RESULT_BYTES", "1023"),
        ("RUNVISOR_LEGACY_RESULT_BYTES", "1MiB"),
        ("RUNVISOR_MAX_OUTPUT_STREAMS", "0"),
        ("RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN", "0"),
        ("RUNVISOR_OUTPUT_WRITE_TIMEOUT_S", "0"),
        ("RUNVISOR_OUTPUT_WRITE_TIMEOUT_S", "inf"),
    ],
)
def test_a_bad_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert str(info.value).startswith(name)


def test_a_bad_setting_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNVISOR_PORT": "not-a-port",
        "RUNVISOR_DATA_DIR": str(tmp_path),
    }
    result = serve_once(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RUNVISOR_PORT" in lines[0] and "not an integer" in lines[0]


def test_bad_tokens_stop_serve_without_echoing_the_secret(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNVISOR_DATA_DIR": str(tmp_path),
        "RUNVISOR_TOKENS": "superuser:hunter2-secret",
        "RUNVISOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
        "RUNVISOR_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = serve_once(env)
    assert result.returncode == 2
    assert "RUNVISOR_TOKENS" in result.stderr and "hunter2" not in result.stderr


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_an_address_that_cannot_be_listened_on_is_one_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNVISOR_HOST": "192.0.2.1",
        "RUNVISOR_TOKENS": "admin:x",
        "RUNVISOR_DATA_DIR": str(tmp_path),
    }
    result = serve_once(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RUNVISOR_HOST=192.0.2.1" in lines[0], result.stderr


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNVISOR_DATA_DIR": str(blocker / "sub"),
        "RUNVISOR_TOKENS": "admin:x",
    }
    result = serve_once(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runvisor: bad setting: RUNVISOR_DATA_DIR")
