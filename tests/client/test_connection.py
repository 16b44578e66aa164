"""Where the client finds the server and its token (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runvisor.client.connection import DEFAULT_URL, resolve_target
from runvisor.client.errors import ClientError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("RUNVISOR_URL", "RUNVISOR_TOKEN", "RUNVISOR_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_flag_then_variable_then_admin_token_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's default data dir: ~/.local/share/runvisor.
    default_dir = clean_env / "home" / ".local" / "share" / "runvisor"
    default_dir.mkdir(parents=True)
    (default_dir / "admin.token").write_text("from-default-file\n")
    target = resolve_target(url=None, token=None, data_dir=None)
    assert (target.url, target.token) == (DEFAULT_URL, "from-default-file")
    other = clean_env / "other"
    other.mkdir()
    (other / "admin.token").write_text("from-data-dir\n")
    monkeypatch.setenv("RUNVISOR_DATA_DIR", str(other))
    assert resolve_target(url=None, token=None, data_dir=None).token == "from-data-dir"
    assert resolve_target(url=None, token=None, data_dir=str(default_dir)).token == (
        "from-default-file"
    )
    monkeypatch.setenv("RUNVISOR_TOKEN", "from-env")
    monkeypatch.setenv("RUNVISOR_URL", "http://node:9000/")
    target = resolve_target(url=None, token=None, data_dir=None)
    assert (target.url, target.token, target.token_source) == (
        "http://node:9000",
        "from-env",
        "RUNVISOR_TOKEN",
    )
    target = resolve_target(url="http://flag:1", token="from-flag", data_dir=None)
    assert (target.url, target.token) == ("http://flag:1", "from-flag")
    assert "from-flag" not in repr(target)


def test_no_token_anywhere_is_none(clean_env: Path) -> None:
    target = resolve_target(url=None, token=None, data_dir=str(clean_env))
    assert target.token is None and str(clean_env / "admin.token") in target.token_source


@pytest.mark.parametrize("token", ["two words", "tab\there", "nul\0", " "])
def test_a_malformed_token_is_refused_without_being_shown(clean_env: Path, token: str) -> None:
    with pytest.raises(ClientError) as caught:
        resolve_target(url=None, token=token, data_dir=None)
    assert caught.value.exit_status == 2
    assert token.strip() not in caught.value.message or not token.strip()
