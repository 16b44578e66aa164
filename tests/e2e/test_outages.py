"""PostgreSQL or Redis unreachable for a while: runs go on, nothing acknowledged is lost,
reads that need the missing store answer 503, /readyz names it, and the node recovers alone.

The outage is a real one: the node reaches the store through a TCP proxy that the test cuts.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.fix_proxy import TcpProxy, proxied_database_url, proxied_redis_url
from tests.fix_service import Service, wait_until

OUTAGE_S = 10.0
PRINTER = (
    "for i in $(seq 1 {n}); do echo line-$i; head -c 3000 /dev/urandom | base64 -w0; echo;"
    " sleep 0.1; done"
)


def test_postgres_outage_runs_go_on_and_output_is_complete_after(
    service_factory, database_url: str, pg_proxy: TcpProxy, shared_dir: Path
) -> None:
    service: Service = service_factory(db_url=proxied_database_url(database_url, pg_proxy))
    api = service.api
    side_files = []
    runs = []
    for k in range(3):
        side = shared_dir / f"side-{k}.txt"
        side_files.append(side)
        runs.append(api.run_code(f"({PRINTER.format(n=120)}) | tee {side}"))
    wait_until(lambda: all(api.output(r["id"]) for r in runs), 10, "output from every run")

    pg_proxy.cut()
    cut_at = time.monotonic()
    down = wait_until(
        lambda: (r := api.get("/readyz", token="")).status_code == 503 and r.json(),
        10,
        "/readyz to report PostgreSQL down",
    )
    assert down["stores"]["postgres"].startswith("down") and down["stores"]["redis"] == "ok"
    read = api.get(f"/api/v1/runs/{runs[0]['id']}")
    assert read.status_code == 503 and read.json()["error"]["code"] == "store_unavailable"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))  # the outage itself
    assert all(service.run_processes() for _ in [0]), "runs must go on during the outage"
    pg_proxy.restore()

    wait_until(lambda: api.get("/readyz", token="").status_code == 200, 20, "recovery")
    for run, side in zip(runs, side_files, strict=False):
        final = api.wait_finished(run["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        assert api.output(run["id"]) == side.read_bytes()


def test_redis_outage_runs_go_on_and_history_is_complete(
    service_factory, redis_server_url: str, redis_proxy: TcpProxy, shared_dir: Path
) -> None:
    service: Service = service_factory(redis_url=proxied_redis_url(redis_server_url, redis_proxy))
    api = service.api
    side = shared_dir / "side.txt"
    run = api.run_code(f"({PRINTER.format(n=100)}) | tee {side}")
    wait_until(lambda: api.output(run["id"]), 10, "first output")
    redis_proxy.cut()
    down = wait_until(
        lambda: (r := api.get("/readyz", token="")).status_code == 503 and r.json(),
        10,
        "/readyz to report Redis down",
    )
    assert down["stores"]["redis"].startswith("down") and down["stores"]["postgres"] == "ok"
    # History reads do not need Redis; a new run can still be started and finishes.
    during = api.run_code("echo during the outage")
    assert api.wait_finished(during["id"])["status"] == "succeeded"
    time.sleep(OUTAGE_S / 2)
    redis_proxy.restore()
    wait_until(lambda: api.get("/readyz", token="").status_code == 200, 20, "recovery")
    final = api.wait_finished(run["id"], timeout_s=60)
    assert final["status"] == "succeeded"
    assert api.output(run["id"]) == side.read_bytes()
    assert api.output(during["id"]) == b"during the outage\n"
