"""`--peer celery`: what a Python user would pick instead of runvisor for short runs. A Celery
worker (prefork, 2 processes) started by the bench, Redis as broker and result backend under a
key prefix of its own, and B1's workload through it: 16 client threads, each sending the task
and waiting for its result (apply_async + get)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.celery_app import PREFIX_ENV, REDIS_URL_ENV, TASK, make_app
from bench.errors import BenchFailed
from bench.load import threaded_rate
from bench.machine import ROOT
from bench.stores import delete_keys

WORKER_READY_S = 60.0
RESULT_TIMEOUT_S = 30.0


class CeleryPeer:
    name = "Celery"

    def __init__(self, redis_url: str, work_dir: Path, tag: str) -> None:
        self.redis_url = redis_url
        self.prefix = f"runvisor-bench-celery-{tag}:"
        self.log_path = work_dir / "celery-worker.log"
        self.worker: subprocess.Popen[bytes] | None = None
        self.app: Any = None

    def describe(self) -> str:
        return (
            f"Celery {version('celery')}, prefork 2 processes, Redis broker and result backend"
            f" at {self.redis_url}"
        )

    def start(self) -> None:
        try:
            redis.Redis.from_url(self.redis_url, socket_timeout=5).ping()
        except redis.RedisError as exc:
            raise BenchFailed(
                f"--peer celery needs a Redis server at {self.redis_url} (--peer-redis-url): {exc}"
            ) from exc
        env = {**os.environ, REDIS_URL_ENV: self.redis_url, PREFIX_ENV: self.prefix}
        command = [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
            "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
            "--hostname", f"{self.prefix.rstrip(':')}@%h",
            # Less chatter between workers (there is one) and a faster start; no effect on tasks.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.worker = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.app = make_app(self.redis_url, self.prefix)
        deadline = time.monotonic() + WORKER_READY_S
        while True:  # ready when it has run a task
            if self.worker.poll() is not None:
                raise BenchFailed(f"the Celery worker exited:\n{self.log_tail()}")
            try:
                self.echo_hi(timeout_s=2.0)
                return
            except Exception as exc:  # celery's TimeoutError and connection errors alike
                if time.monotonic() > deadline:
                    raise BenchFailed(f"the Celery worker did not answer: {exc!r}") from exc

    def echo_hi(self, timeout_s: float = RESULT_TIMEOUT_S) -> None:
        output = self.app.send_task(TASK).get(timeout=timeout_s)
        if output != "hi\n":
            raise RuntimeError(f"the Celery task returned {output!r}")

    def rate(self, clients: int, seconds: float) -> float:
        return threaded_rate(clients, seconds, self.echo_hi)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> tuple[list[str], list[str]]:
        """Warm shutdown (SIGTERM), SIGKILL of its session after 15 s; its keys deleted."""
        done: list[str] = []
        errors: list[str] = []
        if self.app is not None:
            # A result left in a reference cycle would otherwise be collected at interpreter
            # exit, when its finaliser can no longer reach Redis to unsubscribe (a traceback).
            gc.collect()
            self.app.close()
        if self.worker is not None:
            if self.worker.poll() is None:
                self.worker.send_signal(signal.SIGTERM)
                try:
                    self.worker.wait(15)
                except subprocess.TimeoutExpired:
                    errors.append("the Celery worker did not stop on SIGTERM")
            left = [p.pid for p in psutil.process_iter() if _session_of(p.pid) == self.worker.pid]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.worker.wait()
            done.append(f"Celery worker stopped ({len(left)} processes killed)")
        try:
            done.append(f"{delete_keys(self.redis_url, self.prefix)} Celery Redis keys deleted")
        except redis.RedisError as exc:
            errors.append(f"could not delete Celery's Redis keys {self.prefix}*: {exc}")
        return done, errors


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
