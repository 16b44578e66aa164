"""`runvisor run`, `runs`, `logs`, `stop` against a real node."""

from __future__ import annotations

import json

from tests.client.cli_runner import cli, cli_bytes, one_error_line
from tests.fix_service import Api, Service


def test_run_with_env_then_runs_list_and_show(service: Service, api: Api) -> None:
    command = api.create_command('echo "$GREETING"', env={"GREETING": None})
    other = api.create_command("exit 3")
    started = cli(service, "run", str(command["id"]), "--env", "GREETING=hello", "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["command_id"] == command["id"] and run["env_keys"] == ["GREETING"]
    api.wait_status(run["id"], "succeeded")
    assert api.output(run["id"]) == b"hello\n"
    failed = cli(service, "run", str(other["id"]))
    assert failed.returncode == 0 and failed.stdout.startswith("started run "), failed
    failed_id = int(failed.stdout.split()[-1])
    api.wait_status(failed_id, "failed")

    table = cli(service, "runs", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "COMMAND",
        "STATUS",
        "EXIT",
        "NODE",
        "STARTED",
        "FINISHED",
        "REASON",
    ]
    assert [row.split()[:4] for row in rows] == [
        [str(failed_id), str(other["id"]), "failed", "3"],
        [str(run["id"]), str(command["id"]), "succeeded", "0"],
    ]
    by_status = json.loads(cli(service, "runs", "list", "--status", "failed", "--json").stdout)
    assert [r["id"] for r in by_status["items"]] == [failed_id]
    by_command = cli(service, "runs", "list", "--command", str(command["id"]), "--json")
    assert [r["id"] for r in json.loads(by_command.stdout)["items"]] == [run["id"]]
    none = cli(service, "runs", "list", "--status", "running", "--command", str(command["id"]))
    assert none.returncode == 0 and none.stdout.split() == header.split()

    shown = cli(service, "runs", "show", str(run["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "status:" in shown.stdout and "succeeded" in shown.stdout
    assert "attempts:" in shown.stdout
    as_json = json.loads(cli(service, "runs", "show", str(run["id"]), "--json").stdout)
    assert as_json["id"] == run["id"] and as_json["status"] == "succeeded"

    undeclared = cli(service, "run", str(command["id"]), "--env", "NAME=x")
    assert undeclared.returncode == 2
    assert one_error_line(undeclared).startswith("runvisor: 422 validation_error: env.NAME")
    bad_pair = cli(service, "run", str(command["id"]), "--env", "NOEQUALS")
    assert bad_pair.returncode == 2 and "KEY=VALUE" in bad_pair.stderr
    bad_status = cli(service, "runs", "list", "--status", "nonsense")
    assert bad_status.returncode == 2
    one_error_line(bad_status)


def test_logs_prints_the_exact_bytes(service: Service, api: Api) -> None:
    run = api.run_code(r"printf 'a\0b\377\r\n'; printf 'err\n' >&2")
    api.wait_finished(run["id"])
    result = cli_bytes(service, "logs", str(run["id"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == api.output(run["id"]) == b"a\0b\xff\r\nerr\n"
    tail = cli_bytes(service, "logs", str(run["id"]), "--offset", "6")
    assert tail.stdout == b"err\n"
    missing = cli(service, "logs", "999999")
    assert missing.returncode == 4
    assert one_error_line(missing) == "runvisor: 404 not_found: run 999999 not found"
    followed = cli(service, "logs", "-f", "999999")
    assert followed.returncode == 4
    assert one_error_line(followed) == "runvisor: 404 not_found: run 999999 not found"


def test_stop_sends_the_grace_and_a_second_stop_is_a_conflict(service: Service, api: Api) -> None:
    run = api.run_code("trap 'sleep 30' TERM; echo ready; while :; do sleep 0.1; done")
    api.wait_status(run["id"], "running")
    stopped = cli(service, "stop", str(run["id"]), "--grace", "1", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["id"] == run["id"]
    audit = api.get(f"/api/v1/audit?run_id={run['id']}&action=run.stop").json()["items"]
    assert [entry["detail"] for entry in audit] == [{"grace_s": 1.0}]
    # The trap ignores SIGTERM: the run ends by SIGKILL after the 1 s grace, not the default 10.
    ended = api.wait_status(run["id"], "stopped", timeout_s=8)
    assert ended["signal"] == 9
    again = cli(service, "stop", str(run["id"]))
    assert again.returncode == 5
    assert one_error_line(again).startswith("runvisor: 409 run_finished: run")
    out_of_range = cli(service, "stop", str(run["id"]), "--grace", "4000")
    assert out_of_range.returncode == 2
