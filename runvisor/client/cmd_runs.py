"""`runvisor run`, `runs list|show`, `logs`, `stop`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from runvisor.client.api import RunvisorClient
from runvisor.client.follow import StdoutSink, describe_end, follow_run, run_exit_status
from runvisor.client.options import api_command, json_option, parse_pairs
from runvisor.client.output import (
    cell_text,
    page_note,
    print_fields,
    print_json,
    print_table,
    when,
)

RUN_FIELDS = (
    "id",
    "command_id",
    "status",
    "exit_code",
    "signal",
    "reason",
    "node",
    "pid",
    "attempt",
    "restart_count",
    "next_attempt_at",
    "created_at",
    "started_at",
    "finished_at",
    "output_bytes",
    "output_truncated",
    "stop_requested_by",
    "env_keys",
    "placement",
    "queued_reason",
)
RUN_COLUMNS = [
    ("ID", lambda r: r["id"]),
    ("COMMAND", lambda r: r.get("command_id")),
    ("STATUS", lambda r: r.get("status")),
    ("EXIT", lambda r: _exit_text(r)),
    ("NODE", lambda r: r.get("node")),
    ("STARTED", lambda r: when(r.get("started_at"))),
    ("FINISHED", lambda r: when(r.get("finished_at"))),
    ("REASON", lambda r: r.get("reason") or r.get("queued_reason")),
]


def _exit_text(run: Mapping[str, Any]) -> str:
    if run.get("exit_code") is not None:
        return str(run["exit_code"])
    if run.get("signal") is not None:
        return f"sig {run['signal']}"
    return "-"


def _ended(run: dict[str, Any]) -> int:
    """The exit status of a followed run, with a line on stderr when it did not succeed."""
    status = run_exit_status(run)
    if run["status"] != "succeeded":
        click.echo(f"runvisor: {describe_end(run)} (exit status {status})", err=True)
    return status


@click.command("run")
@click.argument("command_id", type=click.IntRange(min=1))
@click.option(
    "--env",
    "env",
    multiple=True,
    callback=parse_pairs,
    metavar="NAME=VALUE",
    help="set a variable the command declares (repeatable)",
)
@click.option("--timeout", "timeout_s", type=float, help="a shorter timeout for this run")
@click.option("--node", help="run on this node (overrides the command's)")
@click.option("--any-node", is_flag=True, help="run on any node, whatever the command says")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=parse_pairs,
    metavar="KEY=VALUE",
    help="run on a node with this label (repeatable; overrides the command's labels)",
)
@click.option("--no-labels", is_flag=True, help="ignore the command's labels")
@click.option(
    "-f", "--follow", is_flag=True, help="print the output as it comes; exit as the run does"
)
@json_option
@api_command
def run_command(
    *,
    client: RunvisorClient,
    command_id: int,
    env: dict[str, str],
    timeout_s: float | None,
    node: str | None,
    any_node: bool,
    labels: dict[str, str],
    no_labels: bool,
    follow: bool,
    as_json: bool,
) -> int:
    """Start a run of a command (operator)."""
    if any_node and node is not None:
        raise click.UsageError("--node and --any-node: give one")
    if no_labels and labels:
        raise click.UsageError("--label and --no-labels: give one")
    body: dict[str, Any] = {}
    if env:
        body["env"] = env
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if node is not None or any_node:
        body["node"] = node  # null: any node
    if labels or no_labels:
        body["labels"] = labels
    run = client.start_run(command_id, body)
    if as_json and not follow:
        print_json(run)
        return 0
    if not follow:
        click.echo(f"started run {run['id']}")
        return 0
    # Following: stdout is the run's output only, so it can be piped; the id goes to stderr.
    click.echo(f"runvisor: started run {run['id']}", err=True)
    return _ended(follow_run(client, run["id"]))


@click.group("runs")
def runs_group() -> None:
    """The runs: list, show."""


@runs_group.command("list")
@click.option(
    "--status",
    metavar="STATUS[,STATUS…]",
    help="statuses, comma-separated, or `active` / `terminal`",
)
@click.option("--command", "command_id", type=click.IntRange(min=1), help="one command's runs")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@api_command
def list_runs(
    *,
    client: RunvisorClient,
    status: str | None,
    command_id: int | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    if command_id is not None:
        params["command_id"] = command_id
    page = client.list_runs(params)
    if as_json:
        print_json(page)
        return
    print_table(page["items"], RUN_COLUMNS)
    page_note(page)


@runs_group.command("show")
@click.argument("run_id", type=click.IntRange(min=1))
@json_option
@api_command
def show_run(*, client: RunvisorClient, run_id: int, as_json: bool) -> None:
    """Show one run, with its attempts."""
    run = client.run(run_id)
    if as_json:
        print_json(run)
        return
    print_fields(run, [k for k in RUN_FIELDS if k in run])
    attempts = run.get("attempts") or []
    if attempts:
        click.echo("attempts:")
        print_table(
            attempts,
            [
                ("#", lambda a: a.get("attempt")),
                ("NODE", lambda a: a.get("node")),
                ("PID", lambda a: a.get("pid")),
                ("STARTED", lambda a: when(a.get("started_at"))),
                ("FINISHED", lambda a: when(a.get("finished_at"))),
                ("EXIT", lambda a: _exit_text(a)),
                ("REASON", lambda a: cell_text(a.get("reason"))),
            ],
            indent="  ",
        )


@click.command("logs")
@click.argument("run_id", type=click.IntRange(min=1))
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="keep printing until the run ends; exit with the run's exit status",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="start at this byte")
@api_command
def logs(*, client: RunvisorClient, run_id: int, follow: bool, offset: int) -> int:
    """Print a run's output, the exact bytes."""
    if follow:
        return _ended(follow_run(client, run_id, offset=offset))
    client.output(run_id, offset=offset, follow=False, write=StdoutSink(offset).write)
    return 0


@click.command("stop")
@click.argument("run_id", type=click.IntRange(min=1))
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0, max=3600),
    help="seconds between SIGTERM and SIGKILL (server default: RUNVISOR_DEFAULT_GRACE_S)",
)
@json_option
@api_command
def stop(*, client: RunvisorClient, run_id: int, grace_s: float | None, as_json: bool) -> None:
    """Stop a run (operator). Answers at once; the run ends shortly after."""
    run = client.stop_run(run_id, grace_s=grace_s)
    if as_json:
        print_json(run)
    else:
        click.echo(f"stopping run {run_id} (status {run.get('status')})")
