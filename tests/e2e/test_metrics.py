"""GET /metrics on a live node: runs move exactly the counters they should, the gauges show
running and queued runs, HTTP requests are labelled by route template (never a raw path),
every role may read it and a token is required, and a scrape never waits on a PostgreSQL that
does not answer: the queued-runs gauge is left out instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runvisor.http.routes import ROUTES
from runvisor.metrics import UNMATCHED_ROUTE
from tests.fix_metrics import Samples, moved, parse, value
from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.fix_service import ADMIN, OPERATOR, VIEWER, Api, Service
from tests.polling import wait_until

OUTPUT_BYTES = 12345
FLAKY_OUTPUT = b"oops"


def scrape(api: Api, token: str = VIEWER) -> Samples:
    response = api.get("/metrics", token=token)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)  # prometheus-client's own parser: raises if malformed


def scrape_until(api: Api, check: Callable[[Samples], bool], what: str) -> Samples:
    def attempt() -> Samples | None:
        samples = scrape(api)
        return samples if check(samples) else None

    return wait_until(attempt, 10, what)


def process_tracking(api: Api) -> str:
    mechanism: str = api.get("/readyz", token="").json()["runs"]["process_tracking"]
    return mechanism


def test_runs_move_the_counters_by_exactly_what_they_did(service: Service) -> None:
    api = service.api
    mechanism = process_tracking(api)
    before = scrape(api)

    printer = api.run_code(f"head -c {OUTPUT_BYTES} /dev/zero | tr '\\0' x")
    flaky = api.run_code(
        f"printf {FLAKY_OUTPUT.decode()}; exit 3",
        restart={"policy": "on-failure", "max_restarts": 1, "backoff_s": 0},
    )
    assert api.wait_finished(printer["id"])["status"] == "succeeded"
    final = api.wait_finished(flaky["id"])
    assert (final["status"], final["restart_count"]) == ("failed", 1), final
    assert len(api.output(printer["id"])) == OUTPUT_BYTES

    # An attempt's end is counted right after PostgreSQL records it: the run may read as
    # ended a moment before.
    after = scrape_until(
        api,
        lambda s: moved(before, s, "runvisor_attempts_ended_total", mechanism=mechanism) >= 3,
        "the three attempt ends to be counted",
    )
    assert moved(before, after, "runvisor_attempts_ended_total", mechanism=mechanism) == 3
    assert moved(before, after, "runvisor_runs_started_total") == 2
    assert moved(before, after, "runvisor_runs_ended_total", status="succeeded") == 1
    assert moved(before, after, "runvisor_runs_ended_total", status="failed") == 1
    assert moved(before, after, "runvisor_restarts_total", reason="exited") == 1
    flaky_bytes = 2 * len(FLAKY_OUTPUT)  # one per attempt
    assert moved(before, after, "runvisor_output_stored_bytes_total") == (
        OUTPUT_BYTES + flaky_bytes
    )
    # Per attempt its start and its end, which carries its last output (a short run's output
    # is that one batch): group commit may gather them into fewer transactions, but the batch
    # sizes add up to every write.
    assert moved(before, after, "runvisor_journal_batch_size_sum") >= 3 * 2
    assert moved(before, after, "runvisor_journal_batch_seconds_count") >= 1
    assert value(after, "runvisor_store_up", {"store": "postgres"}) == 1
    assert value(after, "runvisor_store_up", {"store": "redis"}) == 1
    assert value(after, "process_resident_memory_bytes") > 0


def test_http_requests_are_counted_by_route_template_and_every_role_may_read(
    service: Service,
) -> None:
    api = service.api
    run = api.run_code("true")
    api.wait_finished(run["id"])
    before = scrape(api)

    for _ in range(3):
        assert api.get(f"/api/v1/runs/{run['id']}").status_code == 200
    assert api.get("/api/v1/runs/999999").status_code == 404
    assert api.get(f"/api/v1/runs/{run['id']}/output").status_code == 200
    assert api.get("/no/such/route").status_code == 404
    after = scrape(api)

    def requests(route: str, status: int) -> float:
        return moved(before, after, "runvisor_http_requests_total", **_get(route, status))

    assert requests("/api/v1/runs/{id}", 200) == 3
    assert requests("/api/v1/runs/{id}", 404) == 1
    assert requests("/api/v1/runs/{id}/output", 200) == 1
    assert requests(UNMATCHED_ROUTE, 404) == 1
    assert requests("/metrics", 200) == 1  # the first scrape, counted once it was answered
    latency = {"route": "/api/v1/runs/{id}", "method": "GET"}
    assert moved(before, after, "runvisor_http_request_duration_seconds_count", **latency) == 4
    # Templates only: a raw path (an id) would make a series per run.
    routes = {labels["route"] for labels in _labels(after, "runvisor_http_requests_total")}
    assert routes <= {path for _, path, _ in ROUTES} | {UNMATCHED_ROUTE}
    assert f"/api/v1/runs/{run['id']}" not in routes

    for token in (VIEWER, OPERATOR, ADMIN):
        scrape(api, token)
    legacy_header = api.get("/metrics", token="", headers={"token": VIEWER})
    assert legacy_header.status_code == 200
    for token, code in (("", "missing_token"), ("not-a-token", "invalid_token")):
        refused = api.get("/metrics", token=token)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == code
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="runvisor"'


def test_the_gauges_show_this_nodes_running_runs_and_the_queue(service_factory: Any) -> None:
    service: Service = service_factory(RUNVISOR_MAX_RUNNING="1")
    api = service.api
    before = scrape(api)
    running = api.run_code("sleep 60")
    queued = api.run_code("sleep 60")
    assert api.run(queued["id"])["status"] == "queued"
    scrape_until(api, lambda s: _gauges(s) == (1, 1), "one run running and one queued")

    for run in (queued, running):
        stop = api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
        assert stop.status_code == 202, stop.text
        assert api.wait_finished(run["id"])["status"] == "stopped"
    after = scrape_until(api, lambda s: _gauges(s) == (0, 0), "no run in the gauges")
    # The queued one ended without an attempt (the HTTP side stopped it), the other by its end.
    assert moved(before, after, "runvisor_runs_ended_total", status="stopped") == 2
    assert moved(before, after, "runvisor_runs_started_total") == 1


def test_a_scrape_never_waits_on_postgres(
    service_factory: Any, database_url: str, pg_proxy: TcpProxy
) -> None:
    service: Service = service_factory(db_url=proxied_database_url(database_url, pg_proxy))
    api = service.api
    assert value(scrape(api), "runvisor_runs_queued") == 0  # present, and nothing waits
    queued_gauge = ("runvisor_runs_queued", frozenset())
    pg_proxy.pause()  # calls hang, as with a SIGSTOPped server
    try:
        # The first waits 1 s for the count; the next finds it still pending and starts none.
        for _ in range(2):
            started = time.monotonic()
            paused = scrape(api)
            assert time.monotonic() - started < 3
            assert queued_gauge not in paused
    finally:
        pg_proxy.resume()
    wait_until(lambda: queued_gauge in scrape(api), 20, "the queued runs to be counted again")

    pg_proxy.cut()  # refused: the node's own calls fail, and it says so
    try:
        wait_until(lambda: _postgres_up(scrape(api)) == 0, 20, "PostgreSQL reported down")
    finally:
        pg_proxy.restore()
    wait_until(lambda: _postgres_up(scrape(api)) == 1, 30, "PostgreSQL reported up again")


def _get(route: str, status: int) -> dict[str, str]:
    return {"route": route, "method": "GET", "status": str(status)}


def _labels(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample, labels in samples if sample == name]


def _gauges(samples: Samples) -> tuple[float, float]:
    """(runvisor_runs_running, runvisor_runs_queued)."""
    return value(samples, "runvisor_runs_running"), value(samples, "runvisor_runs_queued")


def _postgres_up(samples: Samples) -> float | None:
    """runvisor_store_up{store="postgres"}; None before the node has made a call."""
    return samples.get(("runvisor_store_up", frozenset({("store", "postgres")})))
