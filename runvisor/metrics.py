"""The node's Prometheus metrics (GET /metrics), kept by prometheus-client.

Each event is counted at the one place it happens, with a one-line call of a function here.
The counters, histograms and gauges below are the process's: a node is one process. Each app
has a MetricsRegistry of its own, which shows them beside what is read when Prometheus
scrapes (the queued runs, the process's CPU and memory): several apps built in one process
(tests) never register a name twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import disable_created_metrics

from runvisor.models import AttemptEndReason, RunStatus

# The classic text format, which every Prometheus version reads (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "unmatched"  # the route label of a request no route matched (404, 405)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# A `_created` series per counter and histogram would double what is scraped and say little.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it untyped

RUNS_STARTED = Counter(
    "runvisor_runs_started",
    "Queued runs this node took and started (their first attempt)",
    registry=None,
)
RUNS_ENDED = Counter(
    "runvisor_runs_ended",
    "Runs this node ended, by the status they ended with",
    ["status"],
    registry=None,
)
RESTARTS = Counter(
    "runvisor_restarts",
    "Restarts the restart policy decided, by the end reason of the attempt that led to them",
    ["reason"],
    registry=None,
)
ATTEMPTS_ENDED = Counter(
    "runvisor_attempts_ended",
    "Attempts ended on this node, by how their leftover processes were found: `cgroup` (the"
    " attempt's cgroup) or `scan` (/proc scans)",
    ["mechanism"],
    registry=None,
)
OUTPUT_STORED = Counter(
    "runvisor_output_stored_bytes", "Bytes of run output stored in PostgreSQL", registry=None
)
RUNS_RUNNING = Gauge(
    "runvisor_runs_running", "Runs with a live RunActor on this node", registry=None
)
STORE_UP = Gauge(
    "runvisor_store_up",
    "1 when the store answered the node's last call to it, 0 when that call failed",
    ["store"],
    registry=None,
)
HTTP_REQUESTS = Counter(
    "runvisor_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
    registry=None,
)
HTTP_SECONDS = Histogram(
    "runvisor_http_request_duration_seconds",
    "Time the node took to answer a request, by route template and method (a streamed answer:"
    " until its last byte was written)",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)
JOURNAL_BATCH_SIZE = Histogram(
    "runvisor_journal_batch_size",
    "Writes per journal transaction (a group-commit batch: every write waiting)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
    registry=None,
)
JOURNAL_BATCH_SECONDS = Histogram(
    "runvisor_journal_batch_seconds",
    "Time to write and commit one journal transaction (a group-commit batch)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=None,
)
_PROCESS_WIDE = (
    RUNS_STARTED,
    RUNS_ENDED,
    RESTARTS,
    ATTEMPTS_ENDED,
    OUTPUT_STORED,
    RUNS_RUNNING,
    STORE_UP,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    JOURNAL_BATCH_SIZE,
    JOURNAL_BATCH_SECONDS,
)


# The events, each called from the one place it happens.


def run_started() -> None:
    RUNS_STARTED.inc()


def run_ended(status: RunStatus) -> None:
    """A run ended without an attempt ending (stopped while queued or waiting to restart)."""
    RUNS_ENDED.labels(status=str(status)).inc()


def attempt_ended(*, mechanism: str, reason: AttemptEndReason, run_status: RunStatus) -> None:
    """An attempt's end is recorded, and with it the run's status: restarting or ended."""
    ATTEMPTS_ENDED.labels(mechanism=mechanism).inc()
    if run_status is RunStatus.RESTARTING:
        RESTARTS.labels(reason=str(reason)).inc()
    elif run_status.is_terminal:
        RUNS_ENDED.labels(status=str(run_status)).inc()


def output_stored(size: int) -> None:
    OUTPUT_STORED.inc(size)


def count_running(running: Callable[[], int]) -> None:
    """The Supervisor's count of its RunActors, read at each scrape."""
    RUNS_RUNNING.set_function(running)


def store_reachable(store: str, reachable: bool) -> None:
    STORE_UP.labels(store=store).set(1 if reachable else 0)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """`route` is the matched route's template (never the raw path: one series per route)."""
    method = method if method in _METHODS else "other"  # any token is a method to HTTP
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_SECONDS.labels(route=route, method=method).observe(seconds)


def observe_journal_batch(size: int, seconds: float) -> None:
    """One journal transaction (a group-commit batch) of `size` writes, committed in `seconds`."""
    JOURNAL_BATCH_SIZE.observe(size)
    JOURNAL_BATCH_SECONDS.observe(seconds)


class _QueuedRuns:
    """runvisor_runs_queued, read from PostgreSQL at each scrape; absent when it could not be."""

    def __init__(self) -> None:
        self.value: int | None = None

    def collect(self) -> Iterable[Metric]:
        if self.value is None:
            return []
        family = GaugeMetricFamily(
            "runvisor_runs_queued", "Runs queued in PostgreSQL (all nodes), waiting for a slot"
        )
        family.add_metric([], self.value)
        return [family]


class MetricsRegistry:
    """One app's metrics: the process's, its CPU and memory, and the queued runs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in _PROCESS_WIDE:
            self.registry.register(collector)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory…
        self._queued = _QueuedRuns()
        self.registry.register(self._queued)

    def exposition(self, *, queued_runs: int | None) -> bytes:
        """The text format; `queued_runs` None leaves that gauge out (PostgreSQL did not say)."""
        self._queued.value = queued_runs
        return generate_latest(self.registry)
