"""Figures, the targets of issue 8's table, and the table printed (and written) from them.

A figure is a median over repeats of one measurement, next to its raw limit: what the machine
does for the same work without runvisor, measured in the same run. Its ratio is value / raw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Measure = Literal["value", "ratio", "excess"]


@dataclass(frozen=True)
class Target:
    """A bound from the issue's table. `measure` says what it bounds: the value itself, the
    ratio to raw, or the excess over raw (value - raw: time beyond a `sleep`)."""

    text: str
    bound: float
    at_most: bool
    measure: Measure = "value"
    stretch: float | None = None
    beats: str | None = None  # also at least this figure's value (B1: Celery's)


@dataclass
class Figure:
    key: str  # the key into TARGETS, and the figure's name in the table
    unit: str
    value: float
    raw: float | None = None
    repeats: int = 1
    detail: str = ""  # what the raw limit is, and how the value was taken

    @property
    def ratio(self) -> float | None:
        if self.raw is None or self.raw == 0 or math.isnan(self.raw):
            return None
        return self.value / self.raw


PEER_B1 = "B1 Celery short runs/s"
B1_WAITING = "B1 short runs/s, GETs that wait"

TARGETS: dict[str, Target] = {
    "B1 short runs/s": Target(
        "ratio ≥ 0.30 and ≥ Celery's", 0.30, False, "ratio", 0.5, beats=PEER_B1
    ),
    B1_WAITING: Target("ratio ≥ 0.30 and ≥ Celery's", 0.30, False, "ratio", 0.5, beats=PEER_B1),
    "B2 202 answer p50": Target("≤ 2 ms", 2, True, stretch=1),
    "B2 202 answer p99": Target("≤ 10 ms", 10, True, stretch=5),
    "B2 start → terminal p50": Target("≤ 5 ms", 5, True, stretch=3),
    "B2 start → terminal p99": Target("≤ 25 ms", 25, True, stretch=15),
    "B3 output stored": Target("≥ 150 MiB/s", 150, False, stretch=300),
    "B3 RSS growth": Target("≤ 64 MiB", 64, True),
    "B4 lines stored": Target("all", 1.0, False, "ratio"),
    "B4 RSS": Target("≤ 500 MiB", 500, True),
    "B4 CPU": Target("≤ 50 % of a core", 50, True),
    "B4 GET run p99": Target("≤ 50 ms", 50, True),
    "B4b all terminal": Target("≤ sleep + 0.5 s", 0.5, True, "excess", 0.2),
    "B5 stop → stopped p99": Target("≤ 100 ms", 100, True, stretch=50),
    "B5 survivors": Target("0", 0, True),
    "B7 /healthz p99": Target("≤ 100 ms", 100, True, stretch=20),
    "B7 /readyz p99": Target("≤ 100 ms", 100, True, stretch=20),
    "B7 pool warnings": Target("0", 0, True),
    "B8 SSE latency p99 (load)": Target("≤ 250 ms", 250, True),
}


def _measured(figure: Figure, measure: Measure) -> float | None:
    if measure == "value":
        return figure.value
    if measure == "ratio":
        return figure.ratio
    return None if figure.raw is None else figure.value - figure.raw


def _within(x: float, bound: float, at_most: bool) -> bool:
    return x <= bound if at_most else x >= bound


def verdict(figure: Figure, figures: dict[str, Figure]) -> str:
    """'yes', 'yes (stretch)', 'NO', or '-' for a figure without a target."""
    target = TARGETS.get(figure.key)
    if target is None:
        return "-"
    x = _measured(figure, target.measure)
    if x is None or math.isnan(x):
        return "NO (not measured)"
    if not _within(x, target.bound, target.at_most):
        return "NO"
    if target.beats is not None:
        peer = figures.get(target.beats)
        if peer is None:
            return "yes (no peer measured)"
        if figure.value < peer.value:
            return "NO (below the peer)"
    if target.stretch is not None and _within(x, target.stretch, target.at_most):
        return "yes (stretch)"
    return "yes"


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
    if unit in ("MiB/s", "MiB", "runs/s"):
        return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    if unit == "%":
        return f"{value:.0f} %"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f}" + (f" {unit}" if unit else "")


def format_ratio(ratio: float | None) -> str:
    if ratio is None or math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


HEADER = ("figure", "value", "raw", "ratio", "target", "met", "repeats")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, figures: list[Figure]) -> None:
        self.figures.extend(figures)

    def by_key(self) -> dict[str, Figure]:
        return {f.key: f for f in self.figures}

    def rows(self) -> list[tuple[str, ...]]:
        keyed = self.by_key()
        return [
            (
                f.key,
                format_value(f.value, f.unit),
                format_value(f.raw, f.unit),
                format_ratio(f.ratio),
                TARGETS[f.key].text if f.key in TARGETS else "-",
                verdict(f, keyed),
                str(f.repeats),
            )
            for f in self.figures
        ]

    def text_table(self) -> str:
        rows = [HEADER, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)

    def markdown_table(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines)

    def missed(self) -> list[str]:
        keyed = self.by_key()
        return [f.key for f in self.figures if verdict(f, keyed).startswith("NO")]
