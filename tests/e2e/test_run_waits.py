"""`GET /api/v1/runs/{id}?wait_s=N`: the answer comes once the run has ended (woken through
Redis, from whichever node ended it), or after N seconds with the run as it is then; with Redis
unreachable it still comes, from PostgreSQL, within a second or so of the end."""

from __future__ import annotations

import time

from tests.fix_proxy import TcpProxy, proxied_redis_url
from tests.fix_service import Api, Service


def waited(api: Api, run_id: int, wait_s: object) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    response = api.get(f"/api/v1/runs/{run_id}?wait_s={wait_s}")
    assert response.status_code == 200, response.text
    return dict(response.json()), time.monotonic() - started


def test_a_wait_answers_when_the_run_ends_not_at_its_deadline(api: Api) -> None:
    run = api.run_code("sleep 1; echo done")
    final, took = waited(api, run["id"], 30)
    assert final["status"] == "succeeded" and final["exit_code"] == 0, final
    assert took < 10  # about 1 s; never the 30 s deadline
    assert api.output(run["id"]) == b"done\n"
    # An ended run is answered at once.
    again, took = waited(api, run["id"], 30)
    assert again["status"] == "succeeded" and took < 2


def test_a_wait_that_runs_out_answers_the_run_as_it_is(api: Api) -> None:
    run = api.run_code("sleep 30")
    current, took = waited(api, run["id"], 1)
    assert current["status"] in ("queued", "running"), current
    assert 1 <= took < 5
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
    stopped, _ = waited(api, run["id"], 20)
    assert stopped["status"] == "stopped"


def test_bad_waits_are_400_and_unknown_runs_404(api: Api) -> None:
    run = api.run_code("true")
    for bad in ("-1", "61", "x", "1.5", "\uff11"):  # a fullwidth one is not a digit here
        response = api.get(f"/api/v1/runs/{run['id']}?wait_s={bad}")
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_parameter" and "wait_s" in error["message"]
    assert api.get("/api/v1/runs/999999?wait_s=5").status_code == 404


def test_a_run_ended_by_another_node_wakes_the_wait_here(service_factory) -> None:
    node_a: Service = service_factory("node-wait-a")
    node_b: Service = service_factory("node-wait-b")
    run = node_a.api.run_code("sleep 1.5; echo from a")
    node_a.api.wait_status(run["id"], "running")
    final, took = waited(node_b.api, run["id"], 30)
    assert final["status"] == "succeeded" and final["node"] == node_a.node_id, final
    assert took < 10


def test_without_redis_a_wait_still_answers_soon_after_the_end(
    service_factory, redis_server_url: str, redis_proxy: TcpProxy
) -> None:
    service: Service = service_factory(redis_url=proxied_redis_url(redis_server_url, redis_proxy))
    api = service.api
    redis_proxy.cut()
    try:
        run = api.run_code("sleep 1")
        final, took = waited(api, run["id"], 30)
        assert final["status"] == "succeeded", final
        # No message can arrive: PostgreSQL, read every second, gives the end.
        assert took < 10
    finally:
        redis_proxy.restore()
