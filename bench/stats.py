"""Medians and percentiles of samples, and the unit conversions the figures use."""

from __future__ import annotations

import statistics

MIB = 1024 * 1024


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def percentile(samples: list[float], p: int) -> float:
    """The p-th percentile, inclusive method: never outside the samples' range (so the p99 of
    fewer than 100 samples is close to their maximum, not beyond it)."""
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def ms(seconds: float) -> float:
    return seconds * 1000.0
