#!/usr/bin/env python3
"""runvisor benchmark: a real node against the local PostgreSQL and Redis, each figure next to
the raw limit measured in the same run on the same machine.

    .venv/bin/python bench/run_bench.py            # everything, about 2-3 minutes
    .venv/bin/python bench/run_bench.py --quick    # small sizes, a smoke run

It prints its figures (and a table at the end); it asserts nothing about speed. It exits 1 if
the service misbehaves (a run that does not succeed, output bytes missing, a run process left
behind), 2 if it could not set up. bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import requests
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TOKEN = "bench"
TERMINAL = {"succeeded", "failed", "stopped", "timed_out", "lost"}
MIB = 1024 * 1024


class Misbehaved(Exception):
    """The service did something wrong (not merely slow): the benchmark exits 1."""


class Interrupted(BaseException):
    pass


# Small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: int) -> float:
    """The p-th percentile (inclusive method: never outside the sample's range)."""
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


def parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads of a process; {} if it is gone."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return {"VmRSS": process.memory_info().rss // 1024, "Threads": process.num_threads()}
    except psutil.Error:
        return {}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (NaN if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return times.user + times.system


def process_alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds exactly `entry` (NAME=value)."""
    found, needle = [], entry.encode()
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def code_version() -> str:
    """The commit under test and how many files differ from it (read-only git calls)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree)"
    return f"{head}" + (f" + {len(changed)} modified files" if changed else "")


def process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# The node and its API


@dataclass
class Api:
    base: str
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> requests.Response:
        r = self.session.request(method, self.base + path, timeout=60, **kw)
        if r.status_code != expect:
            raise Misbehaved(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r

    def create_command(self, code: str, **fields: Any) -> int:
        r = self.call("POST", "/api/v1/commands", 201, json={"code": code, **fields})
        return int(r.json()["id"])

    def start_run(self, command_id: int) -> dict[str, Any]:
        return dict(self.call("POST", f"/api/v1/commands/{command_id}/runs", 202, json={}).json())

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/runs/{run_id}").json())

    def runs_of(self, command_id: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.call(
                "GET", f"/api/v1/runs?command_id={command_id}&limit=1000&offset={len(items)}"
            ).json()
            items.extend(page["items"])
            if len(items) >= page["total"] or not page["items"]:
                return items


class Node:
    """`runvisor serve` as a child process with its own database, Redis prefix and data dir."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        prefix: str,
        data_dir: Path,
        node_id: str,
        flush_interval_s: float,
        python: str,
    ) -> None:
        self.port = free_port()
        self.node_id = node_id
        self.log_path = data_dir.parent / "node.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "RUNVISOR_DATABASE_URL": database_url,
            "RUNVISOR_REDIS_URL": redis_url,
            "RUNVISOR_REDIS_PREFIX": prefix,
            "RUNVISOR_DATA_DIR": str(data_dir),
            "RUNVISOR_PORT": str(self.port),
            "RUNVISOR_NODE_ID": node_id,
            "RUNVISOR_TOKENS": f"admin:{TOKEN}",
            "RUNVISOR_LOG_FORMAT": "json",
            "RUNVISOR_FLUSH_INTERVAL_S": str(flush_interval_s),
        }
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = Api(f"http://127.0.0.1:{self.port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "runvisor", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.api.base + "/readyz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not ready after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop_active_runs(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            page = self.api.call("GET", "/api/v1/runs?status=active&limit=1000").json()
            for run in page["items"]:
                with contextlib.suppress(Misbehaved):
                    self.api.call(
                        "POST", f"/api/v1/runs/{run['id']}/stop", 202, json={"grace_s": 0}
                    )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                page = self.api.call("GET", "/api/v1/runs?status=active&limit=1").json()
                if page["total"] == 0:
                    return
                time.sleep(0.1)
        except (requests.RequestException, Misbehaved, KeyError):
            return

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM as an operator would; SIGKILL if it does not stop. The exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def wait_terminal(
    api: Api,
    run_id: int,
    timeout_s: float,
    poll_s: float,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = api.run(run_id)
        if on_poll is not None:
            on_poll(run)
        if run["status"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise Misbehaved(f"run {run_id} still {run['status']} after {timeout_s} s")
        time.sleep(poll_s)


def expect_succeeded(run: dict[str, Any], what: str) -> None:
    if run["status"] != "succeeded":
        raise Misbehaved(
            f"{what}: run {run['id']} ended {run['status']} (exit_code={run['exit_code']},"
            f" signal={run['signal']}, reason={run['reason']!r})"
        )


# The measurements


@dataclass
class Row:
    name: str
    service: str
    raw: str
    ratio: str
    note: str = ""


@dataclass
class Bench:
    node: Node
    db_url: str
    args: argparse.Namespace
    rows: list[Row] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return self.node.api

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cpu0, wall0, load0 = proc_cpu_s(self.node.pid), time.monotonic(), loadavg()
        print(f"\n== {name} (load average {load0})", flush=True)
        yield
        cpu = proc_cpu_s(self.node.pid) - cpu0
        wall = time.monotonic() - wall0
        self.results.setdefault("phases", {})[name] = {"wall_s": wall, "node_cpu_s": cpu}
        print(
            f"   [{name}: {wall:.1f} s wall, node process used {cpu:.1f} s CPU"
            f" ({cpu / wall * 100:.0f}% of one core)]",
            flush=True,
        )

    # 1. Start latency

    def start_latency(self) -> None:
        n, warmup = self.args.latency_runs, 3
        raw = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(["bash", "-c", "true"], check=True)
            raw.append(time.perf_counter() - t0)
        command_id = self.api.create_command("true", name="bench-true")
        client, server, post = [], [], []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            started = self.api.start_run(command_id)
            t_post = time.perf_counter() - t0
            run = started
            if run["status"] not in TERMINAL:
                run = wait_terminal(self.api, started["id"], 30, self.args.latency_poll_s)
            elapsed = time.perf_counter() - t0
            expect_succeeded(run, "start latency")
            if i < warmup:
                continue
            client.append(elapsed)
            post.append(t_post)
            created, finished = parse_ts(run["created_at"]), parse_ts(run["finished_at"])
            if created is not None and finished is not None:
                server.append(finished - created)
        r_med = median(raw)
        self.results["start_latency"] = {
            "client_s": client,
            "server_s": server,
            "post_s": post,
            "raw_s": raw,
        }
        print(f"   raw `bash -c true` via subprocess: median {ms(r_med)}, p90 {ms(pct(raw, 90))}")
        print(
            f"   POST -> succeeded (client, polled every {ms(self.args.latency_poll_s)}):"
            f" median {ms(median(client))}, p90 {ms(pct(client, 90))},"
            f" min {ms(min(client))}, max {ms(max(client))}"
        )
        print(f"   POST request alone: median {ms(median(post))}")
        print(
            f"   created_at -> finished_at (server clock): median {ms(median(server))},"
            f" p90 {ms(pct(server, 90))}"
        )
        self.rows.append(
            Row(
                f"start latency `true` (N={n})",
                f"med {ms(median(client))} / p90 {ms(pct(client, 90))}",
                f"med {ms(r_med)}",
                f"{median(client) / r_med:.1f}x (p90 {pct(client, 90) / r_med:.1f}x)",
            )
        )

    # 2. Output throughput

    def throughput(self) -> None:
        size, rounds, source = self.args.bytes, self.args.throughput_rounds, self.args.source
        scratch = Path(self.node.env["RUNVISOR_DATA_DIR"]) / "raw-throughput.out"
        raw = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run(["bash", "-c", f"head -c {size} {source} > {scratch}"], check=True)
            raw.append(time.perf_counter() - t0)
            if scratch.stat().st_size != size:
                raise RuntimeError("the raw write did not write every byte")
            scratch.unlink()
        command_id = self.api.create_command(
            f"head -c {size} {source}",
            name="bench-throughput",
            max_output_bytes=self.args.max_output_bytes,
        )
        totals, writer_done, stored_info = [], [], []
        for i in range(rounds):
            t0 = time.perf_counter()
            run = self.api.start_run(command_id)
            seen: dict[str, float] = {}

            def watch(r: dict[str, Any], t0: float = t0, seen: dict[str, float] = seen) -> None:
                pid = r.get("pid")
                if pid and "exit" not in seen and not process_alive(int(pid)):
                    seen["exit"] = time.perf_counter() - t0

            if run["status"] not in TERMINAL:
                run = wait_terminal(
                    self.api, run["id"], self.args.throughput_timeout_s, 0.02, watch
                )
            total = time.perf_counter() - t0
            expect_succeeded(run, "throughput")
            if run["output_bytes"] != size or run["output_truncated"]:
                raise Misbehaved(
                    f"throughput: run {run['id']} stored {run['output_bytes']} bytes"
                    f" of {size} (truncated={run['output_truncated']})"
                )
            info = self.verify_stored(run["id"], size)
            totals.append(total)
            writer_done.append(seen.get("exit", float("nan")))
            stored_info.append(info)
            print(
                f"   round {i + 1}: {total:.2f} s -> {size / MIB / total:.0f} MiB/s"
                f" (writer process gone after {seen.get('exit', float('nan')):.2f} s);"
                f" stored {info['rows']} rows, {info['bytes'] / MIB:.0f} MiB,"
                f" {info['on_disk'] / 1024:.0f} KiB after TOAST compression",
                flush=True,
            )
        raw_rate = size / MIB / median(raw)
        svc_rate = size / MIB / median(totals)
        self.results["throughput"] = {
            "bytes": size,
            "service_s": totals,
            "raw_s": raw,
            "writer_exit_s": writer_done,
            "stored": stored_info,
        }
        print(
            f"   raw `head -c {size} {source} > file` (same disk as the spool):"
            f" median {median(raw):.3f} s -> {raw_rate:.0f} MiB/s"
        )
        print(
            f"   service: median {median(totals):.2f} s -> {svc_rate:.0f} MiB/s;"
            f" ratio raw/service {svc_rate and raw_rate / svc_rate:.1f}x"
        )
        self.rows.append(
            Row(
                f"output throughput {size / MIB:.0f} MiB {source} (x{rounds})",
                f"{svc_rate:.0f} MiB/s ({median(totals):.2f} s)",
                f"{raw_rate:.0f} MiB/s ({median(raw):.3f} s)",
                f"{raw_rate / svc_rate:.1f}x slower",
                "stored size verified",
            )
        )

    def verify_stored(self, run_id: int, size: int) -> dict[str, int]:
        """Check in PostgreSQL and through the API that every byte is there, once."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            rows, total, first, end, on_disk = conn.execute(
                "SELECT count(*), coalesce(sum(octet_length(data)), 0), min(byte_offset),"
                " max(byte_offset + octet_length(data)), coalesce(sum(pg_column_size(data)), 0)"
                " FROM run_output WHERE run_id = %s",
                (run_id,),
            ).fetchone()
            gaps = conn.execute(
                "SELECT count(*) FROM (SELECT byte_offset + octet_length(data) AS stop,"
                " lead(byte_offset) OVER (ORDER BY byte_offset) AS next"
                " FROM run_output WHERE run_id = %s) s WHERE next IS NOT NULL AND next <> stop",
                (run_id,),
            ).fetchone()[0]
        if total != size or first != 0 or end != size or gaps:
            raise Misbehaved(
                f"run {run_id}: run_output holds {total} bytes from {first} to {end}"
                f" with {gaps} gaps/overlaps; expected {size}"
            )
        tail = self.api.call(
            "GET", f"/api/v1/runs/{run_id}/output?offset={size - 4096}&limit=4096"
        ).content
        past = self.api.call("GET", f"/api/v1/runs/{run_id}/output?offset={size}").content
        zeros = self.args.source == "/dev/zero"
        if len(tail) != 4096 or (zeros and tail != b"\0" * 4096) or past != b"":
            raise Misbehaved(f"run {run_id}: the API's output does not end at byte {size}")
        return {"rows": int(rows), "bytes": int(total), "on_disk": int(on_disk)}

    # 3. Concurrency

    def concurrency(self) -> None:
        n, rounds = self.args.concurrency, self.args.concurrency_rounds
        command_id = self.api.create_command("sleep 2; echo done", name="bench-concurrency")
        per_round = []
        for i in range(rounds):
            per_round.append(self._concurrency_round(command_id, n, i))
        key = {k: median([r[k] for r in per_round]) for k in per_round[0] if k != "runs"}
        self.results["concurrency"] = per_round
        print(
            f"   medians of {rounds} rounds: wall {key['wall_s']:.2f} s (raw limit 2 s),"
            f" RSS {key['rss_before'] / 1024:.0f} -> peak {key['rss_peak'] / 1024:.0f}"
            f" -> after {key['rss_after'] / 1024:.0f} MiB, threads {key['threads_before']:.0f}"
            f" -> peak {key['threads_peak']:.0f} -> after {key['threads_after']:.0f}"
        )
        self.rows.append(
            Row(
                f"{n} x `sleep 2` at once (x{rounds})",
                f"{key['wall_s']:.2f} s",
                "2.00 s",
                f"{key['wall_s'] / 2:.2f}x",
                f"last start after {key['last_start_s']:.2f} s; all POSTs answered after"
                f" {key['posts_s']:.2f} s; per run beyond the 2 s: spawn med"
                f" {ms(key['spawn_lag_med_s'])}, end med {ms(key['end_lag_med_s'])}"
                f" (max {ms(key['end_lag_max_s'])})",
            )
        )
        self.rows.append(
            Row(
                f"node RSS, {n} runs",
                f"peak {key['rss_peak'] / 1024:.0f} MiB",
                f"idle {key['rss_before'] / 1024:.0f} MiB",
                f"+{(key['rss_peak'] - key['rss_before']) / n:.0f} KiB/run",
                f"after {key['rss_after'] / 1024:.0f} MiB",
            )
        )
        self.rows.append(
            Row(
                f"node threads, {n} runs",
                f"peak {key['threads_peak']:.0f}",
                f"idle {key['threads_before']:.0f}",
                f"+{(key['threads_peak'] - key['threads_before']) / n:.2f}/run",
                f"after {key['threads_after']:.0f}; pykka: 1 thread per RunActor",
            )
        )

    def _concurrency_round(self, command_id: int, n: int, index: int) -> dict[str, Any]:
        pid = self.node.pid
        time.sleep(1.0)
        before = proc_status(pid)
        samples: list[dict[str, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                s = proc_status(pid)
                if s:
                    s["procs"] = process_count()
                    samples.append(s)
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        local = threading.local()
        barrier = threading.Barrier(self.args.post_workers)

        def post(_: int) -> dict[str, Any]:
            api = getattr(local, "api", None)
            if api is None:
                api = local.api = Api(self.api.base)
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(10)  # every worker thread exists: fire together
            return api.start_run(command_id)

        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(self.args.post_workers)
        try:
            futures = [pool.submit(post, i) for i in range(n)]
            # Poll counts only (cheap for the node), while the POSTs go out and after; the full
            # list once, at the end.
            max_running, t_posts = 0, None
            deadline = time.monotonic() + 120
            query = f"/api/v1/runs?command_id={command_id}&limit=1&status="
            while True:
                posted = all(f.done() for f in futures)
                if posted and t_posts is None:
                    t_posts = time.perf_counter() - t0
                    for f in futures:
                        f.result()  # a failed POST raises here
                running = self.api.call("GET", query + "running").json()["total"]
                max_running = max(max_running, running)
                if (
                    posted
                    and running == 0
                    and self.api.call("GET", query + "active").json()["total"] == 0
                ):
                    break
                if time.monotonic() > deadline:
                    raise Misbehaved("concurrency: runs not finished after 120 s")
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            wanted = {f.result()["id"] for f in futures}
            runs = [r for r in self.api.runs_of(command_id) if r["id"] in wanted]
            if len(runs) != n:
                raise Misbehaved(f"concurrency: {len(runs)} runs listed of {n} started")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            stop.set()
            sampler.join()
        for r in runs:
            expect_succeeded(r, "concurrency")
        bad = [r["id"] for r in runs if r["output_bytes"] != len(b"done\n")]
        if bad:
            raise Misbehaved(f"concurrency: runs {bad[:10]} lack their output")
        created = min(parse_ts(r["created_at"]) or 0 for r in runs)
        last_start = max(parse_ts(r["started_at"]) or 0 for r in runs) - created
        span = max(parse_ts(r["finished_at"]) or 0 for r in runs) - created
        # Per run: claimed (run started_at) -> finished_at, less the 2 s the code sleeps; split
        # at the attempt's started_at (its row is written just after the process was spawned).
        overhead, spawn_lag, end_lag = [], [], []
        for r in runs:
            claimed, finished = parse_ts(r["started_at"]) or 0, parse_ts(r["finished_at"]) or 0
            recorded = parse_ts(r["attempts"][-1]["started_at"]) if r["attempts"] else None
            overhead.append(finished - claimed - 2.0)
            if recorded is not None:
                spawn_lag.append(recorded - claimed)
                end_lag.append(finished - recorded - 2.0)
        # After: the RunActors stop on their own; wait until the thread count has settled
        # (unchanged for 1 s; asyncio's to_thread workers may stay, so not "back to before").
        deadline, last, since = time.monotonic() + 15, -1, time.monotonic()
        while time.monotonic() < deadline:
            threads = proc_status(pid).get("Threads", 0)
            if threads != last:
                last, since = threads, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
            time.sleep(0.1)
        after = proc_status(pid)
        result = {
            "wall_s": wall,
            "posts_s": t_posts,
            "server_span_s": span,
            "last_start_s": last_start,
            "run_overhead_med_s": median(overhead),
            "run_overhead_max_s": max(overhead),
            "spawn_lag_med_s": median(spawn_lag),
            "spawn_lag_max_s": max(spawn_lag, default=float("nan")),
            "end_lag_med_s": median(end_lag),
            "end_lag_max_s": max(end_lag, default=float("nan")),
            "max_running_seen": max_running,
            "rss_before": before.get("VmRSS", 0),
            "rss_peak": max(s.get("VmRSS", 0) for s in samples),
            "rss_after": after.get("VmRSS", 0),
            "threads_before": before.get("Threads", 0),
            "threads_peak": max(s.get("Threads", 0) for s in samples),
            "threads_after": after.get("Threads", 0),
            "machine_procs_peak": max(s.get("procs", 0) for s in samples),
            "runs": len(runs),
        }
        print(
            f"   round {index + 1}: all {n} succeeded after {wall:.2f} s (POSTs answered after"
            f" {t_posts:.2f} s, last run started {last_start:.2f} s after the first was"
            f" created, server span {span:.2f} s, at most {max_running} seen running;"
            f" per run, claimed -> finished less the 2 s sleep: median"
            f" {ms(median(overhead))}, max {ms(max(overhead))}, of which claim -> attempt"
            f" recorded median {ms(median(spawn_lag))}, max {ms(max(spawn_lag))} and attempt"
            f" recorded -> finished less 2 s median {ms(median(end_lag))}, max"
            f" {ms(max(end_lag))});"
            f" RSS {result['rss_before'] / 1024:.0f}/{result['rss_peak'] / 1024:.0f}/"
            f"{result['rss_after'] / 1024:.0f} MiB, threads {result['threads_before']}/"
            f"{result['threads_peak']}/{result['threads_after']} (before/peak/after);"
            f" at most {result['machine_procs_peak']} processes on the machine",
            flush=True,
        )
        return result

    # 4. Live output lateness

    def lateness(self) -> None:
        lines, rounds = self.args.lateness_lines, self.args.lateness_rounds
        poll = self.args.lateness_poll_s
        code = f'for i in $(seq 1 {lines}); do echo "line $i $(date +%s.%N)"; sleep 0.1; done'
        command_id = self.api.create_command(code, name="bench-lateness")
        delays: list[float] = []
        per_round = []
        for i in range(rounds):
            got = self._lateness_round(command_id, lines, poll)
            per_round.append(got)
            delays.extend(got)
            print(
                f"   round {i + 1}: {len(got)} lines, median {ms(median(got))},"
                f" p90 {ms(pct(got, 90))}, max {ms(max(got))}",
                flush=True,
            )
        interval = self.args.flush_interval_s
        self.results["lateness"] = {"delays_s": per_round, "flush_interval_s": interval}
        print(
            f"   all {len(delays)} lines: median {ms(median(delays))}, p90"
            f" {ms(pct(delays, 90))}, max {ms(max(delays))}; flush interval {ms(interval)}"
            f" (a line waits up to one interval for the next flush tick, so the expected"
            f" median is about half of it)"
        )
        self.rows.append(
            Row(
                f"live output lateness ({rounds}x{lines} lines)",
                f"med {ms(median(delays))} / max {ms(max(delays))}",
                f"flush every {ms(interval)}",
                f"med {median(delays) / interval:.2f}, max {max(delays) / interval:.2f}"
                " of the interval",
                f"polled every {ms(poll)}",
            )
        )

    def _lateness_round(self, command_id: int, lines: int, poll_s: float) -> list[float]:
        run = self.api.start_run(command_id)
        run_id, offset, buf = run["id"], 0, b""
        delays: list[float] = []
        deadline = time.monotonic() + lines * 0.1 + 60
        while True:
            r = self.api.call("GET", f"/api/v1/runs/{run_id}/output?offset={offset}")
            now = time.time()
            if r.content:
                offset += len(r.content)
                buf += r.content
                *complete, buf = buf.split(b"\n")
                for line in complete:
                    delays.append(now - float(line.split()[2]))
            if r.headers.get("X-Run-Status") in TERMINAL:
                if int(r.headers.get("X-Output-Bytes", -1)) == offset:
                    break
                continue  # the run ended between our read and its status: read the rest
            if time.monotonic() > deadline:
                raise Misbehaved(f"lateness: run {run_id} did not end")
            time.sleep(poll_s)
        expect_succeeded(self.api.run(run_id), "lateness")
        if len(delays) != lines or buf:
            raise Misbehaved(f"lateness: run {run_id} gave {len(delays)} lines of {lines}")
        return delays

    def table(self) -> str:
        head = Row("measurement", "service", "raw limit", "ratio", "note")
        rows = [head, *self.rows]
        widths = [
            max(len(getattr(r, f)) for r in rows) for f in ("name", "service", "raw", "ratio")
        ]
        out = []
        for k, r in enumerate(rows):
            cells = [r.name, r.service, r.raw, r.ratio]
            out.append(
                "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + r.note
            )
            if k == 0:
                out.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        return "\n".join(out)


# Set-up and clean-up


def scratch_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin_url, dbname=name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def delete_keys(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--admin-database-url",
        default="postgresql://postgres@127.0.0.1/postgres",
        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--python",
        default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
        help="the interpreter that runs the node (default: the project's .venv)",
    )
    p.add_argument("--flush-interval-s", type=float, default=0.5)
    p.add_argument(
        "--only",
        action="append",
        choices=["latency", "throughput", "concurrency", "lateness"],
        help="run only these measurements (repeatable)",
    )
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--latency-poll-s", type=float, default=0.005)
    p.add_argument("--bytes", type=int, default=256 * MIB, help="output of the throughput run")
    p.add_argument("--max-output-bytes", type=int, default=2**30)
    p.add_argument(
        "--source",
        default="/dev/zero",
        help="what the throughput run copies (/dev/urandom: output PostgreSQL cannot compress)",
    )
    p.add_argument("--throughput-rounds", type=int, default=3)
    p.add_argument("--throughput-timeout-s", type=float, default=600)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--concurrency-rounds", type=int, default=3)
    p.add_argument(
        "--post-workers",
        type=int,
        default=50,
        help="client threads that send the concurrent POSTs together",
    )
    p.add_argument("--lateness-lines", type=int, default=50)
    p.add_argument("--lateness-rounds", type=int, default=3)
    p.add_argument("--lateness-poll-s", type=float, default=0.02)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one round each: a smoke run, not figures to quote",
    )
    p.add_argument("--json", type=Path, help="also write every sample to this file")
    p.add_argument("--keep-log", type=Path, help="copy the node's log here at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.latency_runs, args.bytes, args.throughput_rounds = 5, 16 * MIB, 1
        args.concurrency, args.concurrency_rounds = 20, 1
        args.lateness_lines, args.lateness_rounds = 10, 1
    args.post_workers = max(1, min(args.post_workers, args.concurrency))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    db_name = f"runvisor_bench_{tag}"
    prefix = f"runvisor-bench-{tag}"
    node_id = f"bench-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="runvisor-bench-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    print(
        f"runvisor bench: {os.cpu_count()} CPUs, load average {loadavg()},"
        f" {platform.python_implementation()} {platform.python_version()},"
        f" kernel {platform.release()}, {process_count()} processes on the machine"
    )
    print(f"   code under test: {code_version()}")
    print(f"   node {node_id}, database {db_name}, Redis prefix {prefix}:, data dir {data_dir}")
    measures = args.only or ["latency", "throughput", "concurrency", "lateness"]
    failures: list[str] = []
    node: Node | None = None
    db_created = False
    bench: Bench | None = None
    t_start = time.monotonic()
    code = 0
    try:
        db_url = scratch_database(args.admin_database_url, db_name)
        db_created = True
        node = Node(
            database_url=db_url,
            redis_url=args.redis_url,
            prefix=prefix,
            data_dir=data_dir,
            node_id=node_id,
            flush_interval_s=args.flush_interval_s,
            python=args.python,
        )
        t0 = time.perf_counter()
        node.start()
        print(
            f"   node pid {node.pid} on port {node.port}, ready after"
            f" {time.perf_counter() - t0:.2f} s; flush interval {args.flush_interval_s} s"
        )
        bench = Bench(node=node, db_url=db_url, args=args)
        steps = {
            "latency": ("1. start latency", bench.start_latency),
            "throughput": ("2. output throughput", bench.throughput),
            "concurrency": ("3. concurrency", bench.concurrency),
            "lateness": ("4. live output lateness", bench.lateness),
        }
        for key in ["latency", "throughput", "concurrency", "lateness"]:
            if key in measures:
                name, step = steps[key]
                with bench.phase(name):
                    step()
                if node.proc is not None and node.proc.poll() is not None:
                    raise Misbehaved(f"the node exited with {node.proc.returncode}")
    except Misbehaved as exc:
        failures.append(str(exc))
    except (Exception, KeyboardInterrupt, Interrupted) as exc:
        print(f"\nbench could not finish: {exc!r}", file=sys.stderr)
        code = 2
    finally:
        cleanup = []
        if node is not None:
            node.stop_active_runs()
            rc = node.stop()
            if rc not in (0, None) and code == 0:
                failures.append(f"the node exited with {rc} on SIGTERM")
            cleanup.append(f"node stopped (exit {rc})")
            if failures and node.log_path.exists():
                print("\nlast lines of the node's log:\n" + node.log_tail(), file=sys.stderr)
            if args.keep_log and node.log_path.exists():
                shutil.copy(node.log_path, args.keep_log)
            left = processes_with_env(f"RUNVISOR_NODE={node_id}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                failures.append(f"run processes left behind: {left}")
            cleanup.append(f"{len(left)} run processes left")
        if db_created:
            try:
                drop_database(args.admin_database_url, db_name)
                cleanup.append(f"database {db_name} dropped")
            except psycopg.Error as exc:
                print(f"could not drop database {db_name}: {exc}", file=sys.stderr)
                code = code or 2
        try:
            cleanup.append(f"{delete_keys(args.redis_url, prefix)} Redis keys deleted")
        except redis.RedisError as exc:
            print(f"could not delete Redis keys {prefix}:*: {exc}", file=sys.stderr)
            code = code or 2
        shutil.rmtree(tmp, ignore_errors=True)
        cleanup.append("temp dir removed")
        print(f"\nclean-up: {', '.join(cleanup)}")
    if bench is not None:
        if args.json:
            args.json.write_text(json.dumps(bench.results, indent=1, default=str))
        if bench.rows:
            print(
                f"\nresults ({os.cpu_count()} CPUs, load average now {loadavg()};"
                f" total {time.monotonic() - t_start:.0f} s)\n"
            )
            print(bench.table())
    if failures:
        print("\nSERVICE MISBEHAVED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
