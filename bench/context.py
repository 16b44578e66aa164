"""What every benchmark gets: the node under test and the sizes of this run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.node import NodeUnderTest
from bench.stats import MIB


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; `quick` and `full` are the two presets."""

    b1_seconds: float
    b1_repeats: int
    b2_runs: int
    b2_repeats: int
    b3_bytes: int
    b3_repeats: int
    b4_runs: int
    b4_seconds: int
    b4b_runs: int
    b4b_sleep_s: int
    b4b_repeats: int
    b5_runs: int
    b5_repeats: int
    b8_runs: int
    b8_seconds: int
    b1_clients: int = 16
    b1_raw_threads: int = 8
    # How often a client asks whether its run has ended (the API has no way to wait for the
    # end): every poll_s at first, then backing off up to max_poll_s. B2 measures latency, so
    # it polls tightly; B1's 16 clients less so, or their GETs would starve the runs.
    b1_poll_s: float = 0.002
    b1_max_poll_s: float = 0.02
    b2_poll_s: float = 0.001
    b2_max_poll_s: float = 0.005


QUICK = Sizes(
    b1_seconds=3,
    b1_repeats=3,
    b2_runs=20,
    b2_repeats=3,
    b3_bytes=128 * MIB,
    b3_repeats=1,
    b4_runs=100,
    b4_seconds=10,
    b4b_runs=50,
    b4b_sleep_s=1,
    b4b_repeats=2,
    b5_runs=20,
    b5_repeats=2,
    b8_runs=100,
    b8_seconds=8,
)
FULL = Sizes(
    b1_seconds=10,
    b1_repeats=5,
    b2_runs=100,
    b2_repeats=5,
    b3_bytes=1024 * MIB,
    b3_repeats=3,
    b4_runs=1000,
    b4_seconds=60,
    b4b_runs=200,
    b4b_sleep_s=2,
    b4b_repeats=3,
    b5_runs=100,
    b5_repeats=3,
    b8_runs=1000,
    b8_seconds=20,
)


@dataclass
class Context:
    node: NodeUnderTest
    sizes: Sizes
    scratch_dir: Path  # for the raw limits' files: on the same disk as the node's spool
    b3_data: str = "zeros"  # what B3's run writes: a key of b3_big_output.GENERATORS
    # Misbehaviour found while a benchmark still gives its figures (a run with a line missing):
    # the bench reports it and exits 1, after the other benchmarks.
    failures: list[str] = field(default_factory=list)
