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
from collections.abc import Iterator
from pathlib import Path

from bench.errors import BenchFailed

FORMATS = {".svg": "flamegraph", ".json": "speedscope"}


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
         "--rate", "100", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield
    finally:
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
        print(top_frames(output.read_text()), flush=True)


def top_frames(collapsed: str, count: int = 15) -> str:
    """The frames most samples were in (self time), from py-spy's collapsed stacks
    (`frame;frame;leaf N` per line)."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        leaves[stack.rsplit(";", 1)[-1]] += int(samples)
        total += int(samples)
    rows = [f"   top of the profile ({total} samples, self time):"]
    rows += [f"   {n / total * 100:5.1f} %  {frame}" for frame, n in leaves.most_common(count)]
    return "\n".join(rows)
