"""A run's env: only what its command declares, never a name that changes what runs; limits.

The security issue: an operator (who may start runs but not write code) could run code of their
own through a run's env, e.g. {"env": {"BASH_ENV": "$(id >&2)"}} on the command `echo benign`.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.fix_service import ADMIN, OPERATOR, Api, Service
from tests.polling import wait_until
from tests.test_env_names import DANGEROUS

INJECTION = "$(echo INJECTED >&2)"


def counts(api: Api) -> tuple[int, int]:
    return api.get("/api/v1/commands").json()["total"], api.get("/api/v1/runs").json()["total"]


def start_as_operator(api: Api, command_id: int, body: dict[str, Any]) -> Any:
    return api.post(f"/api/v1/commands/{command_id}/runs", json=body, token=OPERATOR)


def refused_fields(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    return {d["field"]: d["message"] for d in error["details"]}


def test_an_operator_cannot_set_a_name_that_changes_what_runs(api: Api) -> None:
    command = api.create_command("echo benign", env={"GREETING": None})
    before = counts(api)
    for name in DANGEROUS:
        if "%" in name:
            continue  # not a valid name at all: refused by the name pattern (test_bad_input)
        found = refused_fields(start_as_operator(api, command["id"], {"env": {name: INJECTION}}))
        assert list(found) == [f"env.{name}"], (name, found)
        assert found[f"env.{name}"].endswith("; not allowed"), (name, found)
    assert counts(api) == before  # no run was created
    # The same operator may start the command with what it declares.
    run = start_as_operator(api, command["id"], {"env": {"GREETING": "hi"}})
    assert run.status_code == 202, run.text
    assert api.wait_finished(run.json()["id"])["status"] == "succeeded"
    assert api.output(run.json()["id"]) == b"benign\n"


def test_the_exploit_of_the_issue_is_refused_even_when_an_admin_declared_the_name(
    api: Api,
) -> None:
    before = counts(api)
    for declared in ({"BASH_ENV": None}, {"PATH": "/tmp"}, {"LD_PRELOAD": None, "OK": None}):
        response = api.post("/api/v1/commands", json={"code": "echo benign", "env": declared})
        found = refused_fields(response)
        (name,) = (n for n in declared if n != "OK")
        assert list(found) == [f"env.{name}"], found
        assert "not allowed" in found[f"env.{name}"]
    assert counts(api) == before
    command = api.create_command("echo benign")
    response = start_as_operator(api, command["id"], {"env": {"BASH_ENV": "$(id >&2)"}})
    assert "shell executes" in refused_fields(response)["env.BASH_ENV"]
    assert counts(api)[1] == 0


def test_an_undeclared_name_is_refused_and_creates_no_run(api: Api) -> None:
    plain = api.create_command("echo benign")
    declares_a = api.create_command("echo benign", env={"A": None})
    before = counts(api)
    found = refused_fields(start_as_operator(api, plain["id"], {"env": {"GREETING": "x"}}))
    assert found == {
        "env.GREETING": f"not declared by command {plain['id']}; a run may set only the"
        " variables its command declares"
    }
    response = start_as_operator(api, declares_a["id"], {"env": {"A": "1", "B": "2", "C": "3"}})
    assert set(refused_fields(response)) == {"env.B", "env.C"}
    message = response.json()["error"]["message"]
    assert message.startswith("env.B: not declared by command") and "env.C:" in message
    assert "details" in response.json()["error"]
    assert counts(api) == before


def test_declared_variables_and_defaults_reach_the_run(api: Api) -> None:
    code = 'printenv GREETING; printenv TARGET || echo "no target"'
    command = api.create_command(code, env={"GREETING": "hello", "TARGET": None})
    assert command["env"] == {"GREETING": "hello", "TARGET": None}
    assert api.get(f"/api/v1/commands/{command['id']}").json()["env"] == command["env"]

    def output_of(body: dict[str, Any]) -> tuple[bytes, list[str]]:
        response = start_as_operator(api, command["id"], body)
        assert response.status_code == 202, response.text
        run = api.wait_finished(response.json()["id"])
        assert run["status"] == "succeeded", run
        return api.output(run["id"]), run["env_keys"]

    assert output_of({"env": {"TARGET": "world"}}) == (b"hello\nworld\n", ["GREETING", "TARGET"])
    assert output_of({}) == (b"hello\nno target\n", ["GREETING"])  # the default alone
    assert output_of({"env": {"GREETING": "hi"}}) == (b"hi\nno target\n", ["GREETING"])


def test_limits_are_stored_on_the_command_and_copied_into_its_runs(api: Api) -> None:
    limits = {"cpu": 30, "as": "unlimited", "fsize": 2**62, "nofile": 1024}
    command = api.create_command("true", limits=limits)
    assert command["limits"] == limits
    assert api.get(f"/api/v1/commands/{command['id']}").json()["limits"] == limits
    run = api.start_run(command["id"])
    assert run["limits"] == limits
    assert api.wait_finished(run["id"])["limits"] == limits
    listed = api.get(f"/api/v1/runs?command_id={command['id']}").json()["items"]
    assert [r["limits"] for r in listed] == [limits]
    plain = api.create_command("true")
    assert plain["limits"] == {} and plain["env"] == {}
    assert api.start_run(plain["id"])["limits"] == {}
    before = counts(api)
    for bad in ({"cpu": 0}, {"nproc": "5"}, {"rss": 1}, {"as": 2**62 + 1}):
        response = api.post("/api/v1/commands", json={"code": "true", "limits": bad})
        assert response.status_code == 422, (bad, response.text)
    # Only an admin sets limits (an operator cannot create commands at all).
    response = api.post(
        "/api/v1/commands", json={"code": "true", "limits": {"cpu": 1}}, token=OPERATOR
    )
    assert response.status_code == 403
    assert counts(api) == before


def test_legacy_commands_declare_nothing_and_legacy_exec_gets_the_defaults(
    service: Service,
) -> None:
    api = service.api
    legacy = {"token": ADMIN, "Content-Type": "application/json"}
    created = api.post("/command", token="", headers=legacy, data='{"code": "echo legacy"}')
    assert created.status_code == 200, created.text
    shown = api.get(f"/api/v1/commands/{created.json()['id']}").json()
    assert shown["env"] == {} and shown["limits"] == {}
    command = api.create_command("printenv GREETING", env={"GREETING": "hello", "UNSET": None})
    ran = api.get(f"/command/exec/{command['id']}", token="", headers={"token": OPERATOR})
    assert ran.status_code == 200, ran.text
    run = api.wait_finished(ran.json()["id"])
    assert run["env_keys"] == ["GREETING"]
    assert api.output(run["id"]) == b"hello\n"


def test_a_forbidden_name_already_stored_in_a_run_is_dropped_at_spawn(
    service: Service, database_url: str
) -> None:
    # A run stored before the rule existed (written straight into PostgreSQL): the node starts
    # it at its next tick, without the forbidden variable, and logs that it dropped it.
    api = service.api
    command = api.create_command('echo benign "$GREETING"')
    env = {"BASH_ENV": INJECTION, "GREETING": "hello"}
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO runs (command_id, code, env, max_output_bytes)"
            " VALUES (%s, %s, %s, 1024) RETURNING id",
            (command["id"], command["code"], json.dumps(env)),
        ).fetchone()
    assert row is not None
    run = api.wait_finished(row[0])
    assert run["status"] == "succeeded", run
    assert api.output(run["id"]) == b"benign hello\n"
    wait_until(
        lambda: "run variable dropped" in service.log_path.read_text(errors="replace"),
        10,
        "the warning in the service's log",
    )
    assert "INJECTED" not in service.log_path.read_text(errors="replace")


def test_only_an_admin_may_loosen_the_commands_bounds(api: Api) -> None:
    command = api.create_command(
        "sleep 0", timeout_s=1, restart={"policy": "on-failure", "max_restarts": 2}
    )
    path = f"/api/v1/commands/{command['id']}/runs"
    looser = {
        "timeout_s": 31_536_000,
        "restart": {
            "policy": "always",
            "max_restarts": 1000,
            "window_s": 1,
            "backoff_s": 0,
            "backoff_max_s": 0,
        },
    }
    refused = api.post(path, json=looser, token=OPERATOR)
    assert refused.status_code == 403, refused.text
    message = refused.json()["error"]["message"]
    assert "timeout_s" in message and "restart.policy" in message
    assert api.get(f"/api/v1/runs?command_id={command['id']}").json()["total"] == 0
    tighter = api.post(path, json={"timeout_s": 0.5}, token=OPERATOR)
    assert tighter.status_code == 202, tighter.text
    assert api.post(path, json=looser).status_code == 202  # the admin may
