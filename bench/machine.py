"""What the figures were measured on: the machine, the servers, the code."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import redis

from runvisor.procs.cgroups import cgroup2_mount, favors_dynamic_moves

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    logical_cpus: int
    physical_cores: int | None
    ram_gib: float
    kernel: str
    python: str
    postgres: str
    redis: str
    cgroups: str

    def summary(self) -> list[str]:
        cores = f"{self.logical_cpus} logical CPUs"
        if self.physical_cores:
            cores += f" ({self.physical_cores} cores)"
        return [
            f"CPU: {self.cpu_model}, {cores}; RAM {self.ram_gib:.1f} GiB",
            f"kernel {self.kernel}; Python {self.python}",
            f"PostgreSQL {self.postgres}; {self.redis}",
            f"cgroup v2: {self.cgroups}",
        ]


def cpu_model() -> str:
    """The model name the kernel reports (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def cgroups() -> str:
    """The cgroup v2 mount a node would use, and whether it favors moves (a run's start costs
    about 10 ms more without favordynmods: README, Isolation)."""
    mount = cgroup2_mount()
    if mount is None:
        return "none (runs tracked by /proc scans)"
    return f"{mount}, " + ("favordynmods" if favors_dynamic_moves(mount) else "no favordynmods")


def postgres_version(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def redis_version(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        info = client.info("server")
    finally:
        client.close()
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', 'unknown')}"


def describe(database_url: str, redis_url: str) -> Machine:
    return Machine(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count() or 0,
        physical_cores=psutil.cpu_count(logical=False),
        ram_gib=psutil.virtual_memory().total / 2**30,
        kernel=platform.release(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        postgres=postgres_version(database_url),
        redis=redis_version(redis_url),
        cgroups=cgroups(),
    )


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def code_version() -> str:
    """The commit under test and how many tracked files differ from it (read-only git calls)."""
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
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git work tree)"
    return head + (f" + {len(changed)} modified files" if changed else "")
