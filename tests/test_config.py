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
    }
    settings = load_settings(env, port=9100, node_id=None)
    assert settings.port == 9100  # a flag wins over the environment
    assert settings.host == "0.0.0.0" and settings.flush_interval_s == 0.25
    assert settings.log_format == "json" and settings.data_dir == Path("/tmp/rv")
    assert settings.max_running == 4
    assert settings.legacy_result_bytes == 4096
    assert settings.spool_dir == Path("/tmp/rv/spool")


def test_a_uid_range_is_read_inclusively() -> None:
    uids = load_settings({"RUNVISOR_RUN_UIDS": " 200000-265535 "}).run_uids
    assert uids is not None and (uids.first, uids.last, uids.size) == (200000, 265535, 65536)
    assert 265535 in uids and 265536 not in uids and load_settings({}).run_uids is None


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
        ("RUNVISOR_REDIS_PREFIX", "a b"),
        ("RUNVISOR_MAX_CODE_BYTES", "200000"),
        ("RUNVISOR_LEGACY_RESULT_BYTES", "1023"),
        ("RUNVISOR_LEGACY_RESULT_BYTES", "1MiB"),
        ("RUNVISOR_RUN_UIDS", "0-10"),
        ("RUNVISOR_RUN_UIDS", "9-1"),
        ("RUNVISOR_RUN_UIDS", "200000"),
        ("RUNVISOR_RUN_UIDS", "1-4294967295"),
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


def test_an_empty_variable_is_unset_except_tokens() -> None:
    # RUNVISOR_TOKENS="" is a value (no token at all); any other empty variable is unset.
    settings = load_settings(
        {"RUNVISOR_TOKENS": "", "RUNVISOR_PORT": "", "RUNVISOR_NODE_ID": "", "RUNVISOR_RUN_AS": ""}
    )
    assert settings.tokens == ""
    assert settings.port == 8080 and settings.run_as is None
    assert settings.node_id == Settings().node_id
    assert load_settings({}).tokens is None


def test_only_the_exact_upper_case_names_are_read() -> None:
    settings = load_settings({"runvisor_port": "9000", "Runvisor_Host": "0.0.0.0", "PORT": "1"})
    assert settings.port == 8080 and settings.host == "127.0.0.1"


def test_a_runvisor_variable_of_no_setting_is_ignored_even_the_retired_test_hooks() -> None:
    # RUNVISOR_TEST_HOOKS was a setting until the test hooks left the service: a node whose
    # environment still has it (with any value) starts, as with any other unknown name.
    settings = load_settings({"RUNVISOR_TEST_HOOKS": "perhaps", "RUNVISOR_NO_SUCH": "x"})
    assert settings == load_settings({})
    assert "test_hooks" not in Settings.model_fields


def test_values_are_parsed_as_before() -> None:
    settings = load_settings(
        {
            "RUNVISOR_RUN_LIMITS": "cpu=60, as=2G,nproc=unlimited",
            "RUNVISOR_TOKENS_FILE": " ~/tokens ",
            "RUNVISOR_LOG_LEVEL": " Warning ",
            "RUNVISOR_PROCESS_TRACKING": "SCAN",
            "RUNVISOR_REDIS_URL": " unix:///tmp/v.sock ",
            "RUNVISOR_DEFAULT_GRACE_S": "0",
            "RUNVISOR_MAX_CODE_BYTES": "131000",
            "RUNVISOR_NODE_LABELS": " gpu=1, zone=eu-1 ",
        }
    )
    assert settings.node_labels == {"gpu": "1", "zone": "eu-1"}
    assert load_settings({}).node_labels == {}
    assert settings.run_limits == {"cpu": 60, "as": 2 * 1024**3, "nproc": "unlimited"}
    assert settings.tokens_file == Path("~/tokens").expanduser()
    assert settings.log_level == "warning" and settings.process_tracking == "scan"
    assert settings.redis_url == "unix:///tmp/v.sock"
    assert settings.default_grace_s == 0.0 and settings.max_code_bytes == 131_000


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("RUNVISOR_PORT", "70000", "RUNVISOR_PORT='70000': must be >= 0 and <= 65535"),
        ("RUNVISOR_FLUSH_INTERVAL_S", "0", "RUNVISOR_FLUSH_INTERVAL_S='0': must be >= 0.01"),
        ("RUNVISOR_LEASE_TTL_S", "inf", "RUNVISOR_LEASE_TTL_S='inf': must be a finite number"),
        ("RUNVISOR_PING_TIMEOUT_S", "soon", "RUNVISOR_PING_TIMEOUT_S='soon': not a number"),
        ("RUNVISOR_MAX_BODY_BYTES", "1023", "RUNVISOR_MAX_BODY_BYTES='1023': must be >= 1024"),
        (
            "RUNVISOR_LOG_LEVEL",
            "trace",
            "RUNVISOR_LOG_LEVEL='trace': must be one of debug, info, warning, error",
        ),
        ("RUNVISOR_RUN_LIMITS", "cpu=0", "RUNVISOR_RUN_LIMITS: cpu='0': must be 1 to 2^62"),
        ("RUNVISOR_RUN_LIMITS", "cpu=1,cpu=2", "RUNVISOR_RUN_LIMITS: cpu is given twice"),
        ("RUNVISOR_NODE_LABELS", "gpu", "RUNVISOR_NODE_LABELS='gpu': 'gpu' is not key=value"),
        (
            "RUNVISOR_NODE_LABELS",
            "gpu=1,gpu=2",
            "RUNVISOR_NODE_LABELS='gpu=1,gpu=2': label 'gpu' is given twice",
        ),
        (
            "RUNVISOR_NODE_LABELS",
            "g/pu=1",
            "RUNVISOR_NODE_LABELS='g/pu=1': label key 'g/pu' must be 1-63 characters of letters,"
            " digits, '_', '.' or '-'",
        ),
        (
            "RUNVISOR_NODE_ID",
            "x" * 65,
            f"RUNVISOR_NODE_ID={'x' * 65!r}: 1-64 characters of letters, digits, '-', '_' or '.'",
        ),
    ],
)
def test_a_refusal_is_one_exact_line(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert str(info.value) == message


@pytest.mark.parametrize(
    "name,value",
    [
        ("RUNVISOR_DATABASE_URL", "mysql://admin:s3cret-pw@db/x"),
        ("RUNVISOR_DATABASE_URL", "host=db password=s3cret-pw 'unterminated"),
        ("RUNVISOR_REDIS_URL", "http://:s3cret-pw@cache:6379/0"),
    ],
)
def test_a_refused_url_is_not_echoed(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert str(info.value).startswith(f"{name}: ") and "s3cret" not in str(info.value)


def test_the_first_bad_setting_is_named() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"RUNVISOR_PROCESS_TRACKING": "x", "RUNVISOR_PORT": "x"})
    assert str(info.value).startswith("RUNVISOR_PORT=")


def test_a_bad_flag_is_named_as_the_flag() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"RUNVISOR_PORT": "9000"}, port="http", node_id=None)
    assert str(info.value) == "--port='http': not an integer"
    with pytest.raises(SettingsError) as info:
        load_settings({}, node_id="bad node")
    assert str(info.value).startswith("--node-id='bad node': ")
    with pytest.raises(TypeError):
        load_settings({}, colour="blue")


def test_a_bad_variable_is_an_error_even_when_a_flag_overrides_it() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"RUNVISOR_PORT": "eighty"}, port=9000)
    assert str(info.value).startswith("RUNVISOR_PORT='eighty'")


def test_load_settings_reads_the_process_environment_but_settings_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNVISOR_PORT", "9123")
    monkeypatch.setenv("RUNVISOR_LOG_FORMAT", "json")
    assert load_settings().port == 9123 and load_settings().log_format == "json"
    assert load_settings({}).port == 8080  # a given mapping is the whole environment
    assert Settings().port == 8080 and Settings(host="::1").port == 8080


def test_settings_built_in_code_are_validated_as_text_would_be() -> None:
    settings = Settings(port=9000, run_limits={"cpu": 60, "nproc": "unlimited"}, data_dir="/x")
    assert settings.port == 9000 and settings.data_dir == Path("/x")
    assert settings.run_limits == {"cpu": 60, "nproc": "unlimited"}
    for bad in ({"port": 70000}, {"run_limits": {"cpu": -1}}, {"colour": "blue"}):
        with pytest.raises(ValueError):
            Settings(**bad)


def test_the_tokens_are_not_in_the_repr() -> None:
    settings = load_settings({"RUNVISOR_TOKENS": "admin:hunter2-secret"})
    assert settings.tokens == "admin:hunter2-secret"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_output_stream_settings() -> None:
    assert load_settings({}).max_output_streams == 64
    settings = load_settings(
        {
            "RUNVISOR_MAX_OUTPUT_STREAMS": "100",
            "RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN": "5",
            "RUNVISOR_OUTPUT_WRITE_TIMEOUT_S": "2.5",
        }
    )
    assert settings.max_output_streams == 100 and settings.max_output_streams_per_token == 5
    assert settings.output_write_timeout_s == 2.5
    for name, value in (
        ("RUNVISOR_MAX_OUTPUT_STREAMS", "0"),
        ("RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN", "0"),
        ("RUNVISOR_OUTPUT_WRITE_TIMEOUT_S", "0"),
        ("RUNVISOR_OUTPUT_WRITE_TIMEOUT_S", "inf"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: value})
