"""What every client subcommand shares: where the server is, the token, --json, and errors
printed as one line with a documented exit status."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from runvisor.client.api import RunvisorClient
from runvisor.client.connection import DEFAULT_URL, resolve_target
from runvisor.client.errors import INTERRUPTED, ClientError


def api_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a subcommand --url, --token and --data-dir, call it with `client=` a
    RunvisorClient, and turn a ClientError into `runvisor: MESSAGE` on stderr and its exit
    status (a wrong token: one line and 2, never a traceback)."""

    @click.option(
        "--url",
        metavar="URL",
        help=f"the node's address (RUNVISOR_URL, default {DEFAULT_URL})",
    )
    @click.option(
        "--token",
        metavar="TOKEN",
        help="the token to send (RUNVISOR_TOKEN; default: DATA_DIR/admin.token if it exists)",
    )
    @click.option(
        "--data-dir",
        metavar="DIR",
        help="where a local node keeps admin.token (RUNVISOR_DATA_DIR)",
    )
    @functools.wraps(func)
    def wrapper(url: str | None, token: str | None, data_dir: str | None, **kw: Any) -> None:
        status = 0
        try:
            client = RunvisorClient(resolve_target(url=url, token=token, data_dir=data_dir))
            try:
                result = func(client=client, **kw)
                status = result if isinstance(result, int) else 0
            finally:
                client.close()
        except ClientError as exc:
            click.echo(f"runvisor: {exc.message}", err=True)
            status = exc.exit_status
        except KeyboardInterrupt:
            status = INTERRUPTED
        except BrokenPipeError:
            # `runvisor logs 5 | head`: the reader has all it wanted. Python would complain
            # when it flushes stdout at exit; point stdout at /dev/null first.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(status)

    return wrapper


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="print the server's JSON instead of a table"
    )(func)


def parse_pairs(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """Repeated `K=V` options as a dict; a later K wins."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param=param)
        pairs[key] = val
    return pairs
