"""A slow store is not a stuck run: a run whose row is locked, or a paused PostgreSQL, never
ends a run as stuck, and no byte it printed is lost. (A RunActor that is wedged, not slow,
and the spool its attempt leaves: tests/supervisor/test_wedged_run_actors.py, in process.)

The ping timeout is short (1 s) so that a wait on the store, counted as a late ping, would end
the attempt; the locks and pauses are real (another connection, a proxy that stops forwarding).
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.fix_service import Service, wait_until

# The output flusher's, its batch refused after lock_timeout (it stores for every RunActor).
OUTPUT_WAITS = "output not stored yet; will retry"
TAKEN_FOR_STUCK = "treating the attempt as stuck"


def printer(lines: int) -> tuple[str, bytes]:
    """Code printing `lines` numbered lines, one every 0.5 s, and exactly what it prints."""
    code = f"for i in $(seq 1 {lines}); do echo line $i; sleep 0.5; done"
    return code, b"".join(f"line {i}\n".encode() for i in range(1, lines + 1))


def logged(service: Service, text: str) -> bool:
    """Whether an event of the node's JSON log contains `text`."""
    for line in service.log_path.read_text(errors="replace").splitlines():
        try:
            if text in str(json.loads(line).get("event")):
                return True
        except ValueError:
            continue
    return False


@pytest.mark.slow
def test_a_run_whose_row_is_locked_for_20_s_goes_on_and_keeps_every_byte(
    service_factory, database_url: str
) -> None:
    service: Service = service_factory(RUNVISOR_PING_TIMEOUT_S="1")
    api = service.api
    code, printed = printer(40)
    run = api.run_code(code)
    wait_until(lambda: api.output(run["id"]).startswith(b"line 1\n"), 10, "the first line")

    with psycopg.connect(database_url) as locker:  # commits (and unlocks) when the block ends
        locker.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run["id"],))
        held_until = time.monotonic() + 20
        wait_until(lambda: logged(service, OUTPUT_WAITS), 10, "the wait to be noticed")
        while time.monotonic() < held_until:  # the lock held: the run stays as it is
            now = api.run(run["id"])
            assert now["status"] == "running" and len(now["attempts"]) == 1, now
            time.sleep(0.5)

    final = api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "succeeded", final
    assert [a["reason"] for a in final["attempts"]] == ["exited"]
    assert api.output(run["id"]) == printed
    assert not logged(service, TAKEN_FOR_STUCK)


@pytest.mark.slow
def test_a_postgres_paused_for_30_s_costs_no_run_and_no_byte(
    pg_proxy: TcpProxy, service_factory, database_url: str
) -> None:
    # Every call of the node hangs meanwhile. Several printing runs: their RunActors take the
    # pool's idle connections, so the Supervisor's own calls mostly time out in the pool and it
    # goes on pinging (held in a call of its own, it could not take anyone for wedged).
    service: Service = service_factory(
        db_url=proxied_database_url(database_url, pg_proxy), RUNVISOR_PING_TIMEOUT_S="1"
    )
    api = service.api
    code, printed = printer(80)
    runs = [api.run_code(code) for _ in range(4)]
    for run in runs:
        wait_until(lambda r=run: api.output(r["id"]).startswith(b"line 1\n"), 10, "a first line")

    pg_proxy.pause()
    try:
        paused_until = time.monotonic() + 30
        while time.monotonic() < paused_until:  # the service stays up meanwhile
            assert api.get("/healthz", token="").status_code == 200
            time.sleep(0.5)
        assert len(service.run_processes()) >= 4, "the runs go on while PostgreSQL is paused"
    finally:
        pg_proxy.resume()

    for run in runs:
        final = api.wait_finished(run["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        assert [a["reason"] for a in final["attempts"]] == ["exited"]
        assert api.output(run["id"]) == printed
    assert not logged(service, TAKEN_FOR_STUCK)
