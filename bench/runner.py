"""`python -m bench`: set up the stores and a node, run the benchmarks, clean up in a finally
(also on Ctrl-C and SIGTERM), print the table and write it into docs/benchmarks.md.

Exit status: 0 when the service behaved; 1 when it misbehaved (a run that did not end as it
should, output missing, a process left behind, the node dying or not stopping on SIGTERM);
2 when the bench itself could not finish. Missed targets do not change it: this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import (
    b1_short_runs,
    b2_light_load,
    b3_big_output,
    b4_many_runs,
    b4b_sleepers,
    b5_stop,
    b8_live_output,
)
from bench.context import FULL, QUICK, Context
from bench.docs_section import DOC, section_body, write_section
from bench.errors import BenchFailed, Misbehaved
from bench.machine import Machine, code_version, describe, loadavg
from bench.node import NodeUnderTest
from bench.options import BENCHMARKS, parse_args
from bench.profiler import profiled
from bench.report import Figure, Report
from bench.stores import Stores, autovacuum_stand_in

TITLES = {
    "b1": "B1 short runs through the v1 API",
    "b2": "B2 latency at light load",
    "b3": "B3 one run writing a lot of output",
    "b4": "B4 + B7 many runs printing at once",
    "b4b": "B4b sleeps started at once",
    "b5": "B5 runs stopped at once",
    "b8": "B8 live output: byte written -> byte on the SSE stream",
}


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, through the clean-up."""


@contextlib.contextmanager
def phase(node: NodeUnderTest, title: str) -> Iterator[None]:
    print(f"\n== {title} (load average {loadavg()})", flush=True)
    cpu0, wall0 = node.cpu_s(), time.monotonic()
    try:
        yield
    finally:
        if node.alive():
            cpu, wall = node.cpu_s() - cpu0, time.monotonic() - wall0
            print(
                f"   [{wall:.1f} s; the node used {cpu:.1f} s of CPU, {cpu / wall * 100:.0f} %"
                " of a core]",
                flush=True,
            )


async def run_benchmark(key: str, ctx: Context, peer: Any, profile: Path | None) -> list[Figure]:
    if key == "b1":
        if profile is None:
            return await b1_short_runs.measure(ctx, peer)
        with profiled(ctx.node.pid, profile):
            return await b1_short_runs.measure(ctx, peer)
    measures = {
        "b2": b2_light_load.measure,
        "b3": b3_big_output.measure,
        "b4": b4_many_runs.measure,
        "b4b": b4b_sleepers.measure,
        "b5": b5_stop.measure,
        "b8": b8_live_output.measure,
    }
    return await measures[key](ctx)


def start_peer(args: argparse.Namespace, work_dir: Path, tag: str) -> Any:
    try:
        from bench.peer_celery import CeleryPeer
    except ImportError as exc:
        raise BenchFailed(f"--peer celery needs Celery: pip install -e '.[bench]' ({exc})") from exc
    return CeleryPeer(args.peer_redis_url, work_dir, tag)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    work_dir = Path(tempfile.mkdtemp(prefix="runvisor-bench-"))
    stores = Stores(
        admin_database_url=args.database_url, redis_url=args.redis_url, work_dir=work_dir, tag=tag
    )
    selected = args.only or list(BENCHMARKS)
    report, failures, code = Report(), [], 0
    node: NodeUnderTest | None = None
    peer: Any = None
    machine: Machine | None = None
    ctx: Context | None = None
    t0 = time.monotonic()
    notes = [f"load average at the start: {loadavg()}"]
    print(
        f"runvisor bench ({'quick' if args.quick else 'full'}), code {code_version()}", flush=True
    )
    try:
        stores.open()
        machine = describe(stores.database_url, stores.redis_url or "")
        notes.insert(0, stores.describe())
        for line in [*machine.summary(), *notes]:
            print(f"   {line}", flush=True)
        print(
            f"   scratch database {stores.database_name}, Redis key prefix {stores.redis_prefix}:"
        )
        data_dir = work_dir / "data"
        data_dir.mkdir()
        node = NodeUnderTest.start(stores, data_dir, f"bench-{tag}")
        print(f"   node {node.node_id}, pid {node.pid}, {node.base_url}", flush=True)
        if args.peer:
            peer = start_peer(args, work_dir, tag)
            notes.append(f"peer: {peer.describe()}")
            print(f"   {notes[-1]}", flush=True)
            peer.start()
        ctx = Context(node, QUICK if args.quick else FULL, data_dir, args.b3_data)
        with autovacuum_stand_in(stores.database_url, notes):
            for key in selected:
                with phase(node, TITLES[key]):
                    try:
                        report.add(asyncio.run(run_benchmark(key, ctx, peer, args.profile)))
                    except Misbehaved as exc:
                        failures.append(str(exc))
                node.check_alive()
    except Misbehaved as exc:
        failures.append(str(exc))
    except (Exception, KeyboardInterrupt, Interrupted) as exc:
        print(f"\nthe bench could not finish: {exc!r}", file=sys.stderr)
        code = 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
        done: list[str] = []
        if node is not None:
            node_done, node_failures = node.shut_down()
            done += node_done
            failures += node_failures
            if failures:
                print(f"\nlast lines of the node's log:\n{node.log_tail()}", file=sys.stderr)
            if args.keep_log:
                shutil.copy(node.log_path, args.keep_log)
        for part in (peer, stores):
            if part is not None:
                part_done, errors = part.close()
                done += part_done
                for error in errors:
                    print(error, file=sys.stderr)
                code = 2 if errors else code
        shutil.rmtree(work_dir, ignore_errors=True)
        print(f"\nclean-up: {', '.join([*done, 'temporary directory removed'])}", flush=True)
    if ctx is not None:
        failures += ctx.failures
    notes.append(f"load average at the end: {loadavg()}")
    command_line = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    wall_s = time.monotonic() - t0
    return finish(args, command_line, report, machine, notes, failures, code, wall_s)


def finish(
    args: argparse.Namespace,
    command_line: str,
    report: Report,
    machine: Machine | None,
    notes: list[str],
    failures: list[str],
    code: int,
    wall_s: float,
) -> int:
    """Print the table, write it where asked, and say how it went; the exit status."""
    if report.figures:
        print(f"\nfigures: medians over the repeats; ratio = value / raw ({wall_s:.0f} s)\n")
        print(report.text_table(), flush=True)
        missed = report.missed()
        print("\ntargets missed: " + (", ".join(missed) if missed else "none"))
    complete = not args.only and not failures and code == 0 and machine is not None
    if complete and not args.no_write and machine is not None:
        body = section_body(
            quick=args.quick,
            report=report,
            machine=machine,
            command_line=command_line,
            code=code_version(),
            wall_s=wall_s,
            notes=notes,
        )
        write_section(DOC, "quick" if args.quick else "full", body)
        print(f"written into {DOC.relative_to(DOC.parent.parent)}")
    if args.json:
        args.json.write_text(json.dumps([vars(f) for f in report.figures], indent=1))
    if failures:
        print("\nTHE SERVICE MISBEHAVED:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    return code
