"""`--profile FILE`: py-spy (the `dev` extra) samples the node while B1 runs. The file's suffix
picks the format: .svg a flame graph, .json speedscope, anything else py-spy's raw collapsed
stacks, whose top frames the bench then prints. py-spy needs ptrace rights over the node
(root, or CAP_SYS_PTRACE)."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.errors import BenchFailed

FORMATS = {".svg": "flamegraph", ".json": "speedscope"}
RATE_HZ = 100


def py_spy() -> str:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("py-spy", path=search)
    if found is None:
        raise BenchFailed("--profile needs py-spy: pip install -e '.[dev]'")
    return found


@contextlib.contextmanager
def profiled(pid: int, output: Path) -> Iterator[None]:
    """py-spy records `pid` for as long as the block runs; the profile is written at its end."""
    fmt = FORMATS.get(output.suffix, "raw")
    proc = subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--output", str(output), "--format", fmt,
         "--rate", str(RATE_HZ), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has sampled, then exits
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        if not output.exists():
            raise BenchFailed(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-500:]}")
    print(f"   profile of the node during B1 written to {output} ({fmt})", flush=True)
    if fmt == "raw":
        print(top_frames(output.read_text(), seconds=seconds), flush=True)


def top_frames(collapsed: str, count: int = 15, seconds: float | None = None) -> str:
    """The frames most samples were in (self time), from py-spy's collapsed stacks
    (`frame;frame;leaf N` per line); with the `seconds` sampled (at RATE_HZ), how much of
    that time a thread held the GIL."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        leaves[stack.rsplit(";", 1)[-1]] += int(samples)
        total += int(samples)
    busy = (
        f", the GIL held {total / (seconds * RATE_HZ) * 100:.0f} % of the time" if seconds else ""
    )
    rows = [f"   top of the profile ({total} samples{busy}; self time):"]
    rows += [f"   {n / total * 100:5.1f} %  {frame}" for frame, n in leaves.most_common(count)]
    return "\n".join(rows)
