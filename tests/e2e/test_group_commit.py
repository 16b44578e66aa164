"""The group commit under a real node: many runs printing at once share the journal's batches,
and neither a kill -9 of the node in the middle of them nor a PostgreSQL outage during them
loses, duplicates or misplaces a byte."""

from __future__ import annotations

import time

from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.fix_service import Service, wait_until

RUNS = 16
LINES = 300
# Each run prints a numbered line every 10 ms for about 3 s: the runs' flushes overlap, so
# the writer's batches hold several runs' output at any moment.
PRINTER = f'for i in $(seq 1 {LINES}); do echo "run $RUNVISOR_RUN_ID line $i"; sleep 0.01; done'


def expected(run_id: int) -> bytes:
    return "".join(f"run {run_id} line {i}\n" for i in range(1, LINES + 1)).encode()


def test_kill_9_in_the_middle_of_batches_loses_nothing_acknowledged(service_factory) -> None:
    first: Service = service_factory("node-batch-crash")
    runs = [first.api.run_code(PRINTER) for _ in range(RUNS)]
    wait_until(
        lambda: sum(bool(first.api.output(r["id"])) for r in runs) >= RUNS // 2,
        20,
        "half the runs to have output stored",
    )
    stored_before = {r["id"]: first.api.output(r["id"]) for r in runs}
    first.kill()
    second: Service = service_factory("node-batch-crash")
    for run in runs:
        final = second.api.wait_finished(run["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        output = second.api.output(run["id"])
        assert output == expected(run["id"])
        # What the first node had acknowledged (served as stored) is still there, unchanged.
        assert output.startswith(stored_before[run["id"]])


def test_a_postgres_outage_during_batches_neither_drops_nor_duplicates_output(
    service_factory, database_url: str, pg_proxy: TcpProxy
) -> None:
    service: Service = service_factory(db_url=proxied_database_url(database_url, pg_proxy))
    api = service.api
    runs = [api.run_code(PRINTER) for _ in range(RUNS)]
    wait_until(
        lambda: sum(bool(api.output(r["id"])) for r in runs) >= RUNS // 2,
        20,
        "half the runs to have output stored",
    )
    pg_proxy.cut()  # connections in the middle of a batch are cut with it
    cut_at = time.monotonic()
    wait_until(lambda: api.get("/readyz", token="").status_code == 503, 10, "the outage to be seen")
    wait_until(lambda: time.monotonic() - cut_at >= 3, 5, "3 s of outage", poll_s=0.2)
    pg_proxy.restore()
    for run in runs:
        final = api.wait_finished(run["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        assert api.output(run["id"]) == expected(run["id"])
        assert final["output_bytes"] == len(expected(run["id"]))
