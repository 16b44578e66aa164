"""The `runvisor` command: `serve` and `migrate`."""

from __future__ import annotations

import argparse
import sys

from runvisor import __version__
from runvisor.config import load_settings
from runvisor.errors import SettingsError
from runvisor.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runvisor", description="Run bash commands under supervision."
    )
    parser.add_argument("--version", action="version", version=f"runvisor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a node: the HTTP API and the supervisor")
    serve.add_argument("--host", help="bind address (RUNVISOR_HOST, default 127.0.0.1)")
    serve.add_argument("--port", help="TCP port (RUNVISOR_PORT, default 8080)")
    serve.add_argument("--data-dir", help="spool files, embedded servers (RUNVISOR_DATA_DIR)")
    serve.add_argument("--node-id", help="this node's name (RUNVISOR_NODE_ID, default hostname)")
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument("--data-dir", help="for the embedded PostgreSQL (RUNVISOR_DATA_DIR)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
            "node_id": getattr(args, "node_id", None),
        }
        settings = load_settings(**overrides)
        configure_logging(log_format=settings.log_format, level=settings.log_level)
        if args.command == "serve":
            from runvisor.service import serve

            serve(settings)
        else:
            return _migrate(settings)
    except SettingsError as exc:
        print(f"runvisor: bad setting: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(settings: object) -> int:
    import contextlib

    from runvisor.service import migrate, start_stores

    with contextlib.ExitStack() as stack:
        database_url = start_stores(settings, stack, redis=False)[0]  # type: ignore[arg-type]
        applied = migrate(database_url)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0
