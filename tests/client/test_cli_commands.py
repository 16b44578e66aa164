"""`runvisor commands …`, the token, and errors, against a real node."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from runvisor.client import connection
from runvisor.service import ADMIN_TOKEN_FILE
from tests.client.cli_runner import cli, cli_env, one_error_line
from tests.fix_service import ADMIN, VIEWER, Api, Service, free_port


def test_commands_create_list_show_delete(service: Service, api: Api) -> None:
    created = cli(
        service,
        "commands",
        "create",
        'echo "$GREETING"; exit 3',
        "--name",
        "greet",
        "--timeout",
        "30",
        "--restart",
        "on-failure",
        "--max-restarts",
        "1",
        "--env",
        "GREETING=hi",
        "--env",
        "OTHER",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    command = json.loads(created.stdout)
    stored = api.get(f"/api/v1/commands/{command['id']}").json()
    assert stored == command
    assert stored["name"] == "greet" and stored["code"] == 'echo "$GREETING"; exit 3'
    assert stored["timeout_s"] == 30.0 and stored["env"] == {"GREETING": "hi", "OTHER": None}
    assert stored["restart"]["policy"] == "on-failure" and stored["restart"]["max_restarts"] == 1

    second = cli(service, "commands", "create", "true")
    assert second.returncode == 0 and second.stdout.startswith("created command "), second

    table = cli(service, "commands", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "CREATED", "CODE"]
    assert len(rows) == 2 and rows[0].split()[:2] == [str(command["id"]), "greet"]
    # Aligned: every column starts at the same place on each line.
    assert header.index("CODE") == rows[0].index('echo "$GREETING"')
    assert json.loads(cli(service, "commands", "list", "--json").stdout)["total"] == 2
    paged = cli(service, "commands", "list", "--limit", "1", "--offset", "1", "--json")
    assert [c["id"] for c in json.loads(paged.stdout)["items"]] == [command["id"] + 1]
    one_page = cli(service, "commands", "list", "--limit", "1")
    assert "1 of 2 shown" in one_page.stderr

    shown = cli(service, "commands", "show", str(command["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "name:" in shown.stdout and "greet" in shown.stdout
    assert shown.stdout.rstrip().endswith('echo "$GREETING"; exit 3')
    assert json.loads(cli(service, "commands", "show", str(command["id"]), "--json").stdout) == (
        stored
    )

    deleted = cli(service, "commands", "delete", str(command["id"]), "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True
    assert api.get(f"/api/v1/commands/{command['id']}").status_code == 404
    missing = cli(service, "commands", "show", str(command["id"]))
    assert missing.returncode == 4
    assert one_error_line(missing) == f"runvisor: 404 not_found: command {command['id']} not found"


def test_code_from_stdin(service: Service, api: Api) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "runvisor", "commands", "create", "-", "--json"],
        env=cli_env(service),
        input="echo one\necho two\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert api.get(f"/api/v1/commands/{json.loads(result.stdout)['id']}").json()["code"] == (
        "echo one\necho two\n"
    )


def test_a_wrong_token_is_one_line_and_exit_status_2(service: Service) -> None:
    wrong = cli(service, "commands", "list", token="not-the-token")
    assert wrong.returncode == 2
    line = one_error_line(wrong)
    assert line.startswith("runvisor: 401 invalid_token: the token is not valid")
    assert "RUNVISOR_TOKEN" in line and "not-the-token" not in wrong.stderr + wrong.stdout
    by_flag = cli(service, "runs", "list", "--token", "also-wrong", token=None)
    assert by_flag.returncode == 2 and "also-wrong" not in by_flag.stderr
    assert one_error_line(by_flag).startswith("runvisor: 401 invalid_token")
    none = cli(service, "commands", "list", token=None)
    assert none.returncode == 2
    assert one_error_line(none).startswith("runvisor: 401 missing_token")
    # A token with a newline in it would be a broken header: refused before any request.
    bad = cli(service, "commands", "list", token="two\nlines")
    assert bad.returncode == 2 and "two" not in bad.stderr
    one_error_line(bad)


def test_a_role_too_low_is_403_and_exit_status_2(service: Service) -> None:
    refused = cli(service, "commands", "create", "true", token=VIEWER)
    assert refused.returncode == 2
    assert one_error_line(refused).startswith("runvisor: 403 forbidden: this action needs the")


def test_bad_input_is_the_servers_message_and_exit_status_2(service: Service) -> None:
    refused = cli(service, "commands", "create", "true", "--env", "PATH=/tmp")
    assert refused.returncode == 2
    assert one_error_line(refused).startswith("runvisor: 422 validation_error: env.PATH")
    usage = cli(service, "commands", "show", "abc")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_an_unreachable_server_is_exit_status_3() -> None:
    env = cli_env(None)
    env["RUNVISOR_URL"] = f"http://127.0.0.1:{free_port()}"
    result = cli(None, "commands", "list", env=env)
    assert result.returncode == 3
    assert (
        one_error_line(result)
        == f"runvisor: cannot reach {env['RUNVISOR_URL']}: connection refused"
    )
    bad_url = cli(None, "commands", "list", env={**env, "RUNVISOR_URL": "ftp://x"})
    assert bad_url.returncode == 2
    one_error_line(bad_url)


def test_the_token_comes_from_the_local_admin_token_file(
    service_factory: Callable[..., Service], data_dir: Path
) -> None:
    assert connection.ADMIN_TOKEN_FILE == ADMIN_TOKEN_FILE
    # Without RUNVISOR_TOKENS the node writes DATA_DIR/admin.token, readable by its user only.
    service = service_factory(RUNVISOR_TOKENS=None)
    token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    from_env = cli(
        service, "commands", "create", "true", env=cli_env(service, token=None, data_dir=data_dir)
    )
    assert from_env.returncode == 0, from_env.stderr
    flag_env = cli_env(service, token=None)  # RUNVISOR_DATA_DIR points elsewhere: the flag wins
    by_flag = cli(service, "commands", "list", "--json", "--data-dir", str(data_dir), env=flag_env)
    assert by_flag.returncode == 0, by_flag.stderr
    assert json.loads(by_flag.stdout)["total"] == 1
    assert token not in from_env.stdout + from_env.stderr + by_flag.stdout + by_flag.stderr
    # A token given wins over the file.
    given = cli(service, "commands", "list", env=cli_env(service, token=ADMIN, data_dir=data_dir))
    assert given.returncode == 2 and "token from RUNVISOR_TOKEN" in one_error_line(given)
