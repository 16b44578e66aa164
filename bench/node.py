"""The node under test: `runvisor serve` started as the tests start it (tests/fix_service.py's
Service), with default settings, and what the bench reads of its process: RSS, CPU time, log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.errors import BenchFailed, Misbehaved
from bench.stats import MIB
from bench.stores import Stores
from tests.fix_service import (
    ADMIN,
    Api,
    Service,
    kill_pids,
    remove_node_cgroups,
    stop_active_runs,
)

# What the node logs when a store pool has no connection to give: psycopg_pool's PoolTimeout
# says "couldn't get a connection after N sec", wherever runvisor logs it.
POOL_TIMEOUT = re.compile(r"couldn't get a connection|PoolTimeout")


def is_pool_trouble(line: str) -> bool:
    """A log line about a pool short of connections, or a warning of psycopg_pool itself."""
    if POOL_TIMEOUT.search(line):
        return True
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(entry, dict)
        and str(entry.get("logger", "")).startswith("psycopg.pool")
        and entry.get("level") in ("warning", "error", "critical")
    )


@dataclass
class RssPeak:
    before_mib: float
    peak_mib: float = 0.0
    samples: int = 0

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.before_mib


@dataclass
class NodeUnderTest:
    service: Service  # started
    token: str = ADMIN
    _process: psutil.Process = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._process = psutil.Process(self.pid)

    @classmethod
    def start(cls, stores: Stores, data_dir: Path, node_id: str) -> NodeUnderTest:
        service = Service(
            database_url=stores.database_url,
            redis_url=stores.redis_url or "",
            redis_prefix=stores.redis_prefix,
            data_dir=data_dir,
            node_id=node_id,
            # The defaults a user gets: the tests' faster flush interval is theirs only.
            extra_env={"RUNVISOR_FLUSH_INTERVAL_S": None},
        )
        try:
            service.start()
        except AssertionError as exc:
            raise BenchFailed(f"the node did not start: {exc}") from exc
        return cls(service)

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid

    @property
    def base_url(self) -> str:
        return self.service.api.base

    @property
    def api(self) -> Api:
        return self.service.api

    @property
    def node_id(self) -> str:
        return self.service.node_id

    def alive(self) -> bool:
        return self.service.proc is not None and self.service.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            assert self.service.proc is not None
            raise Misbehaved(
                f"the node exited with {self.service.proc.returncode}:\n{self.log_tail()}"
            )

    def rss_mib(self) -> float:
        return self._process.memory_info().rss / MIB

    def cpu_s(self) -> float:
        """utime + stime of the node process (its runs' CPU is their own)."""
        times = self._process.cpu_times()
        return times.user + times.system

    @contextlib.asynccontextmanager
    async def rss_peak(self, period_s: float = 0.05) -> AsyncIterator[RssPeak]:
        """Sample the node's RSS while the block runs; the peak is known after it."""
        peak = RssPeak(before_mib=self.rss_mib())
        peak.peak_mib = peak.before_mib

        async def sample() -> None:
            while True:
                with contextlib.suppress(psutil.Error):
                    peak.peak_mib = max(peak.peak_mib, self.rss_mib())
                    peak.samples += 1
                await asyncio.sleep(period_s)

        task = asyncio.create_task(sample())
        try:
            yield peak
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(psutil.Error):
                peak.peak_mib = max(peak.peak_mib, self.rss_mib())

    @property
    def log_path(self) -> Path:
        return self.service.log_path

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def count_in_log(self, wanted: Callable[[str], bool], since: int = 0) -> int:
        """Lines of the node's log from byte `since` on that are `wanted`."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return sum(1 for line in log if wanted(line.decode(errors="replace")))

    def log_tail(self, lines: int = 30) -> str:
        return self.service.log_tail(lines)

    def shut_down(self) -> tuple[list[str], list[str]]:
        """Stop what still runs, SIGTERM the node, look for run processes left behind.
        What was done, and how the service misbehaved doing it."""
        failures: list[str] = []
        done: list[str] = []
        try:
            stop_active_runs(self.service)
        except AssertionError as exc:
            failures.append(f"active runs did not stop: {exc}")
        try:
            code = self.service.stop()
            done.append(f"node stopped (exit {code})")
            if code != 0:
                failures.append(f"the node exited with {code} on SIGTERM")
        except AssertionError as exc:
            failures.append(str(exc))
        left = self.service.run_processes()
        kill_pids(left)
        remove_node_cgroups(self.node_id)
        done.append(f"{len(left)} run processes left")
        if left:
            failures.append(f"run processes left behind: {left}")
        return done, failures
