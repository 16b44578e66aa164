"""`runvisor commands list|create|show|delete`."""

from __future__ import annotations

import sys
from typing import Any

import click

from runvisor.client.api import RunvisorClient
from runvisor.client.options import api_command, json_option, parse_pairs
from runvisor.client.output import page_note, print_fields, print_json, print_table, when

COMMAND_FIELDS = (
    "id",
    "name",
    "description",
    "created_at",
    "timeout_s",
    "stuck_after_s",
    "restart",
    "max_output_bytes",
    "env",
    "limits",
    "node",
    "labels",
)


@click.group("commands")
def commands_group() -> None:
    """The stored commands: list, create, show, delete."""


@commands_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@api_command
def list_commands(*, client: RunvisorClient, limit: int, offset: int, as_json: bool) -> None:
    """List commands, oldest first."""
    page = client.list_commands(limit=limit, offset=offset)
    if as_json:
        print_json(page)
        return
    print_table(
        page["items"],
        [
            ("ID", lambda c: c["id"]),
            ("NAME", lambda c: c.get("name")),
            ("CREATED", lambda c: when(c.get("created_at"))),
            ("CODE", lambda c: c.get("code")),
        ],
    )
    page_note(page)


def _env_declarations(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str | None]:
    """`--env NAME=DEFAULT` declares a variable with a default, `--env NAME` one without."""
    declared: dict[str, str | None] = {}
    for value in values:
        name, sep, default = value.partition("=")
        if not name:
            raise click.BadParameter(f"{value!r}: expected NAME or NAME=DEFAULT", param=param)
        declared[name] = default if sep else None
    return declared


@commands_group.command("create")
@click.argument("code")
@click.option("--name", help="a name for people")
@click.option("--description")
@click.option("--timeout", "timeout_s", type=float, help="seconds before a run is ended")
@click.option("--stuck-after", "stuck_after_s", type=float, help="seconds without output")
@click.option(
    "--restart",
    "restart_policy",
    type=click.Choice(["never", "on-failure", "always"]),
    help="the restart policy",
)
@click.option("--max-restarts", type=click.IntRange(min=0))
@click.option(
    "--env",
    "env",
    multiple=True,
    callback=_env_declarations,
    metavar="NAME[=DEFAULT]",
    help="declare a variable a run may set (repeatable)",
)
@click.option("--node", help="run on this node only")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=parse_pairs,
    metavar="KEY=VALUE",
    help="run on nodes with this label (repeatable)",
)
@json_option
@api_command
def create_command(
    *,
    client: RunvisorClient,
    code: str,
    name: str | None,
    description: str | None,
    timeout_s: float | None,
    stuck_after_s: float | None,
    restart_policy: str | None,
    max_restarts: int | None,
    env: dict[str, str | None],
    node: str | None,
    labels: dict[str, str],
    as_json: bool,
) -> None:
    """Create a command that runs `bash -c CODE` (admin). CODE `-` reads it from stdin."""
    body: dict[str, Any] = {"code": sys.stdin.read() if code == "-" else code}
    optional = {
        "name": name,
        "description": description,
        "timeout_s": timeout_s,
        "stuck_after_s": stuck_after_s,
        "node": node,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    restart = {"policy": restart_policy, "max_restarts": max_restarts}
    if any(value is not None for value in restart.values()):
        body["restart"] = {key: value for key, value in restart.items() if value is not None}
    if env:
        body["env"] = env
    if labels:
        body["labels"] = labels
    command = client.create_command(body)
    if as_json:
        print_json(command)
    else:
        click.echo(f"created command {command['id']}")


@commands_group.command("show")
@click.argument("command_id", type=click.IntRange(min=1))
@json_option
@api_command
def show_command(*, client: RunvisorClient, command_id: int, as_json: bool) -> None:
    """Show one command."""
    command = client.command(command_id)
    if as_json:
        print_json(command)
        return
    print_fields(command, [k for k in COMMAND_FIELDS if k in command])
    click.echo("code:")
    click.echo(command["code"])


@commands_group.command("delete")
@click.argument("command_id", type=click.IntRange(min=1))
@json_option
@api_command
def delete_command(*, client: RunvisorClient, command_id: int, as_json: bool) -> None:
    """Delete a command (admin); its runs stay as history."""
    client.delete_command(command_id)
    if as_json:
        print_json({"id": command_id, "deleted": True})
    else:
        click.echo(f"deleted command {command_id}")
