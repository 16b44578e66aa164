"""Reading metrics in tests: the text of a scrape, parsed with prometheus-client's own parser,
as one number per (sample name, labels)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from runvisor.metrics import MetricsRegistry

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition; raises ValueError if it is not the text format."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    """A sample's value; 0 for a labelled counter that has not counted yet (no series)."""
    return samples.get((name, frozenset((labels or {}).items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, labels) - value(before, name, labels)


def scrape_in_process(queued_runs: int | None = None) -> Samples:
    """This process's metrics, as a node's GET /metrics would show them."""
    return parse(MetricsRegistry().exposition(queued_runs=queued_runs).decode())
