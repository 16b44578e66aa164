"""B3: one run writing N bytes (1 GiB; 128 MiB quick), its command's max_output_bytes raised to
fit. MiB/s from sending the POST to the run shown terminal with every byte stored, then the
stored output read back through GET …/output and compared, by SHA-256, with what the generator
writes; and how much the node's RSS grew meanwhile. Raw limit: the same generator writing
into a file beside the node's spool."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from pathlib import Path

from bench.client import TERMINAL, connect, expect_succeeded
from bench.context import Context
from bench.errors import Misbehaved
from bench.machine import loadavg
from bench.report import Figure
from bench.stats import MIB, median

POLL_S = 0.02
TIMEOUT_S = 900.0

# Deterministic generators: the bench knows what each run must have stored. Zeros compress in
# PostgreSQL (TOAST); the AES-CTR key stream of a fixed password does not.
GENERATORS = {
    "zeros": "head -c {size} /dev/zero",
    "random": (
        "openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:runvisor-bench -in /dev/zero"
        " 2>/dev/null | head -c {size}"
    ),
}


def expected_digest(code: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with subprocess.Popen(["bash", "-c", code], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def raw_seconds(code: str, scratch: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", f"{code} > {scratch}"], check=True)
    elapsed = time.perf_counter() - t0
    scratch.unlink()
    return elapsed


async def measure(ctx: Context) -> list[Figure]:
    size = ctx.sizes.b3_bytes
    code = GENERATORS[ctx.b3_data].format(size=size)
    want_digest, want_size = await asyncio.to_thread(expected_digest, code)
    if want_size != size:
        raise RuntimeError(f"the generator wrote {want_size} bytes, not {size}")
    command_id = int(
        ctx.node.api.create_command(code, name="bench-b3", max_output_bytes=size)["id"]
    )
    scratch = ctx.scratch_dir / "b3-raw.out"
    raw_rates: list[float] = []
    rates: list[float] = []
    growths: list[float] = []
    async with connect(ctx.node.base_url, ctx.node.token, 2) as api:
        for repeat in range(ctx.sizes.b3_repeats):
            raw_rates.append(size / MIB / await asyncio.to_thread(raw_seconds, code, scratch))
            async with ctx.node.rss_peak() as rss:
                t0 = time.perf_counter()
                run = await api.start_run(command_id)
                while run["status"] not in TERMINAL:
                    if time.perf_counter() - t0 > TIMEOUT_S:
                        raise Misbehaved(f"B3: run {run['id']} still {run['status']}")
                    await asyncio.sleep(POLL_S)
                    run = await api.run(run["id"])
                elapsed = time.perf_counter() - t0
            expect_succeeded(run, "B3")
            if run["output_bytes"] != size or run["output_truncated"]:
                raise Misbehaved(
                    f"B3: run {run['id']} stored {run['output_bytes']} bytes of {size}"
                    f" (truncated: {run['output_truncated']})"
                )
            digest, read = await api.output_digest(run["id"])
            if (digest, read) != (want_digest, size):
                raise Misbehaved(
                    f"B3: run {run['id']}'s output read back is {read} bytes with SHA-256"
                    f" {digest}; the generator wrote {size} bytes with SHA-256 {want_digest}"
                )
            rates.append(size / MIB / elapsed)
            growths.append(rss.growth_mib)
            print(
                f"   repeat {repeat + 1}: {elapsed:.2f} s → {rates[-1]:.0f} MiB/s, stored"
                f" byte-exact; RSS {rss.before_mib:.0f} → peak {rss.peak_mib:.0f} MiB;"
                f" raw {raw_rates[-1]:.0f} MiB/s; load average {loadavg()}",
                flush=True,
            )
    n = len(rates)
    detail = (
        f"{size // MIB} MiB of {ctx.b3_data}; raw: the generator into a file on the spool's disk"
    )
    return [
        Figure("B3 output stored", "MiB/s", median(rates), median(raw_rates), n, detail),
        Figure("B3 RSS growth", "MiB", median(growths), None, n, "peak RSS - RSS before"),
    ]
