"""The `runvisor` command: `serve` and `migrate` run a node; the client's subcommands
(runvisor/client/) drive one over HTTP. One click group holds both."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from runvisor import __version__
from runvisor.client.cmd_commands import commands_group
from runvisor.client.cmd_nodes import drain, nodes
from runvisor.client.cmd_runs import logs, run_command, runs_group, stop

if TYPE_CHECKING:
    from runvisor.config import Settings

# Help output wide enough for the option descriptions; -h as well as --help.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="runvisor", message="%(prog)s %(version)s")
def root() -> None:
    """Run bash commands under supervision.

    `serve` runs a node; the other subcommands drive a node over its HTTP API (RUNVISOR_URL,
    RUNVISOR_TOKEN, or the local DATA_DIR/admin.token).
    """


@root.command()
@click.option("--host", help="bind address (RUNVISOR_HOST, default 127.0.0.1)")
@click.option("--port", help="TCP port (RUNVISOR_PORT, default 8080)")
@click.option("--data-dir", help="spool files, embedded servers (RUNVISOR_DATA_DIR)")
@click.option("--node-id", help="this node's name (RUNVISOR_NODE_ID, default hostname)")
def serve(host: str | None, port: str | None, data_dir: str | None, node_id: str | None) -> None:
    """Run a node: the HTTP API and the supervisor."""
    # Flags stay text: load_settings validates them with the variables, with the same errors.
    from runvisor.service import serve as serve_node

    with _bad_settings_exit():
        serve_node(_settings(host=host, port=port, data_dir=data_dir, node_id=node_id))


@root.command()
@click.option("--data-dir", help="for the embedded PostgreSQL (RUNVISOR_DATA_DIR)")
def migrate(data_dir: str | None) -> None:
    """Apply database migrations and exit."""
    import contextlib

    from runvisor.service import migrate as apply_migrations
    from runvisor.service import start_stores

    with _bad_settings_exit(), contextlib.ExitStack() as stack:
        database_url = start_stores(_settings(data_dir=data_dir), stack, redis=False)[0]
        applied = apply_migrations(database_url)
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


def _settings(**overrides: Any) -> Settings:
    """The node's Settings (flags over RUNVISOR_* variables), with the logging set up."""
    # Imported here: the client subcommands need neither pydantic-settings nor structlog.
    from runvisor.config import load_settings
    from runvisor.logs import configure_logging

    settings = load_settings(**overrides)
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    return settings


@contextmanager
def _bad_settings_exit() -> Iterator[None]:
    """A bad setting (or a data dir or address that cannot be used) stops start-up with
    `runvisor: bad setting: …` and exit status 2."""
    from runvisor.errors import SettingsError

    try:
        yield
    except SettingsError as exc:
        click.echo(f"runvisor: bad setting: {exc}", err=True)
        raise SystemExit(2) from None


for _command in (commands_group, run_command, runs_group, logs, stop, nodes, drain):
    root.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """The console script: the exit status, from the command or from click (2: usage)."""
    try:
        root.main(args=argv, prog_name="runvisor")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0
