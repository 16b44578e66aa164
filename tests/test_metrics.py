"""runvisor.metrics on its own: each event moves the series it should, the text parses, an app
may have its registry beside another's, and the queued-runs gauge is left out when unknown."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runvisor import metrics
from runvisor.metrics import MetricsRegistry
from runvisor.models import AttemptEndReason, RunStatus
from tests.fix_metrics import moved, parse, scrape_in_process, value


def test_two_apps_in_one_process_each_have_a_registry() -> None:
    first, second = MetricsRegistry(), MetricsRegistry()  # DuplicateTimeseries if shared
    metrics.run_started()
    for registry in (first, second):
        samples = parse(registry.exposition(queued_runs=None).decode())
        assert value(samples, "runvisor_runs_started_total") >= 1


def test_the_queued_runs_gauge_is_absent_when_postgres_did_not_say() -> None:
    assert ("runvisor_runs_queued", frozenset()) not in scrape_in_process(queued_runs=None)
    assert value(scrape_in_process(queued_runs=7), "runvisor_runs_queued") == 7


def test_the_exposition_parses_and_names_units_and_help() -> None:
    text = MetricsRegistry().exposition(queued_runs=0).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["runvisor_output_stored_bytes"].type == "counter"
    assert families["runvisor_http_request_duration_seconds"].type == "histogram"
    assert families["runvisor_journal_batch_size"].type == "histogram"
    assert families["runvisor_runs_queued"].type == "gauge"
    assert "process_resident_memory_bytes" in families
    assert all(f.documentation for name, f in families.items() if name.startswith("runvisor_"))
    assert "_created" not in text  # one series per counter, not two


def test_an_attempt_end_counts_its_mechanism_and_the_runs_fate() -> None:
    before = scrape_in_process()
    metrics.attempt_ended(
        mechanism="cgroup", reason=AttemptEndReason.EXITED, run_status=RunStatus.RESTARTING
    )
    metrics.attempt_ended(
        mechanism="scan", reason=AttemptEndReason.TIMED_OUT, run_status=RunStatus.TIMED_OUT
    )
    after = scrape_in_process()
    assert moved(before, after, "runvisor_attempts_ended_total", mechanism="cgroup") == 1
    assert moved(before, after, "runvisor_attempts_ended_total", mechanism="scan") == 1
    assert moved(before, after, "runvisor_restarts_total", reason="exited") == 1
    assert moved(before, after, "runvisor_restarts_total", reason="timed_out") == 0
    assert moved(before, after, "runvisor_runs_ended_total", status="timed_out") == 1
    assert moved(before, after, "runvisor_runs_ended_total", status="restarting") == 0


def test_a_request_is_counted_by_route_template_and_an_unknown_method_as_other() -> None:
    before = scrape_in_process()
    metrics.observe_request("/api/v1/runs/{id}", "GET", 200, 0.003)
    metrics.observe_request("unmatched", "BREW", 405, 0.001)
    after = scrape_in_process()
    route = {"route": "/api/v1/runs/{id}", "method": "GET"}
    assert moved(before, after, "runvisor_http_requests_total", **route, status="200") == 1
    assert moved(before, after, "runvisor_http_request_duration_seconds_count", **route) == 1
    buckets = "runvisor_http_request_duration_seconds_bucket"
    assert moved(before, after, buckets, **route, le="0.005") == 1
    assert moved(before, after, buckets, **route, le="0.0025") == 0
    unmatched = {"route": "unmatched", "method": "other", "status": "405"}
    assert moved(before, after, "runvisor_http_requests_total", **unmatched) == 1


def test_a_journal_batch_is_observed_by_size_and_time() -> None:
    before = scrape_in_process()
    metrics.observe_journal_batch(5, 0.002)
    after = scrape_in_process()
    assert moved(before, after, "runvisor_journal_batch_size_count") == 1
    assert moved(before, after, "runvisor_journal_batch_size_sum") == 5
    assert moved(before, after, "runvisor_journal_batch_size_bucket", le="4.0") == 0
    assert moved(before, after, "runvisor_journal_batch_size_bucket", le="8.0") == 1
    assert moved(before, after, "runvisor_journal_batch_seconds_sum") == pytest.approx(0.002)
