"""The command line of `python -m bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.b3_big_output import GENERATORS

BENCHMARKS = ("b1", "b2", "b3", "b4", "b4b", "b5", "b8")
DEFAULT_PEER_REDIS_URL = "redis://127.0.0.1:6379/0"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="runvisor's benchmark: issue 8's figures (B1-B7) of a node it starts, each"
        " next to the raw limit measured in the same run. Run from the repository root.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="every benchmark reduced (under two minutes on 2 cores); default: the full sizes",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable); docs/benchmarks.md is then left as it is",
    )
    p.add_argument(
        "--peer",
        choices=["celery"],
        help="also run B1's workload through Celery (the `bench` extra), beside runvisor's row",
    )
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server on which the bench may create and drop a scratch database"
        " (e.g. postgresql://postgres@127.0.0.1:5432/postgres); default: an embedded one",
    )
    p.add_argument(
        "--redis-url",
        help="a Redis server for the node (its keys under a prefix of its own, deleted at the"
        " end); default: an embedded Valkey",
    )
    p.add_argument(
        "--peer-redis-url",
        help="the Redis server of --peer celery (its own key prefix, deleted at the end);"
        f" default: --redis-url if given, else {DEFAULT_PEER_REDIS_URL}",
    )
    p.add_argument(
        "--b3-data",
        choices=sorted(GENERATORS),
        default="zeros",
        help="what B3's run writes: zeros (compress in PostgreSQL) or random (do not)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the node with py-spy during B1 (the `dev` extra; root): .svg flame graph,"
        " .json speedscope, else collapsed stacks and their top frames printed",
    )
    p.add_argument(
        "--no-write", action="store_true", help="do not write the figures into docs/benchmarks.md"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep-log", type=Path, metavar="FILE", help="copy the node's log here")
    args = p.parse_args(argv)
    if args.profile is not None and args.only and "b1" not in args.only:
        p.error("--profile records during B1: add --only b1")
    if args.peer_redis_url is None:
        args.peer_redis_url = args.redis_url or DEFAULT_PEER_REDIS_URL
    return args
