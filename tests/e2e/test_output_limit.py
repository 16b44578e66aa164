"""The head-and-tail output limit on a real node: what is kept, how /output maps offsets around
the gap, `on_output_limit: stop`, restarts and adoption past the limit, and a run printing
1 GiB under the default limit in bounded memory, disk and rows."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
import requests

from runvisor.procs.file_space import allocated_bytes
from tests.e2e.test_legacy_result import rss_mib
from tests.fix_service import OPERATOR, Api, Service
from tests.polling import wait_until

MIB = 1024 * 1024
GIB = 1024 * MIB
# 5000 'm' between HEAD and TAIL: 5008 bytes, past a limit of 1000 (head 500, tail 500).
SMALL = "printf HEAD; head -c 5000 /dev/zero | tr '\\0' m; printf TAIL"
SMALL_OUTPUT = b"HEAD" + b"m" * 5000 + b"TAIL"


def marker(dropped: int) -> bytes:
    return f"\n[runvisor: {dropped} bytes dropped]\n".encode()


def read(api: Api, run_id: int, **params: Any) -> requests.Response:
    response = api.get(f"/api/v1/runs/{run_id}/output", params=params)
    assert response.status_code == 200, response.text
    return response


def stored_rows(database_url: str, run_id: int) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(octet_length(data)), 0) FROM run_output"
            " WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_head_a_marker_and_the_tail_are_kept(api: Api, database_url: str) -> None:
    run = api.wait_finished(api.run_code(SMALL, max_output_bytes=1000)["id"])
    assert run["status"] == "succeeded" and run["reason"] is None
    assert run["output_bytes"] == 5008 and run["output_truncated"] is True
    assert run["output_gap"] == {"start": 500, "end": 4508}
    assert run["max_output_bytes"] == 1000 and run["on_output_limit"] == "truncate"
    whole = read(api, run["id"])
    assert whole.content == SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]
    assert whole.headers["X-Output-Bytes"] == "5008"
    assert whole.headers["X-Output-Gap"] == "500-4508"
    assert whole.headers["X-Output-Marker-At"] == "500"
    assert whole.headers["X-Output-Next-Offset"] == "5008"
    assert stored_rows(database_url, run["id"])[1] <= 1000


def test_offsets_map_around_the_gap(api: Api) -> None:
    run_id = api.wait_finished(api.run_code(SMALL, max_output_bytes=1000)["id"])["id"]
    # Within the head: no marker.
    head = read(api, run_id, offset=100, limit=300)
    assert head.content == SMALL_OUTPUT[100:400]
    assert (
        head.headers["X-Output-Next-Offset"] == "400" and "X-Output-Marker-At" not in head.headers
    )
    # Across the gap: 100 bytes of head, the marker, 100 of tail; `limit` counts output bytes.
    across = read(api, run_id, offset=400, limit=200)
    assert across.content == SMALL_OUTPUT[400:500] + marker(4008) + SMALL_OUTPUT[4508:4608]
    assert across.headers["X-Output-Marker-At"] == "100"
    assert across.headers["X-Output-Next-Offset"] == "4608"
    # Ending right at the gap: no marker yet; the next read (inside the gap) starts with it.
    upto = read(api, run_id, offset=0, limit=500)
    assert upto.content == SMALL_OUTPUT[:500] and upto.headers["X-Output-Next-Offset"] == "500"
    inside = read(api, run_id, offset=500, limit=50)
    assert inside.content == marker(4008) + SMALL_OUTPUT[4508:4558]
    assert inside.headers["X-Output-Offset"] == "500"
    assert read(api, run_id, offset=3000).content == marker(4008) + SMALL_OUTPUT[4508:]
    # Within the tail: exactly those bytes.
    tail = read(api, run_id, offset=5000)
    assert tail.content == b"mmmmTAIL" and tail.headers["X-Output-Next-Offset"] == "5008"
    # Paging on with X-Output-Next-Offset yields the whole kept output, the marker once.
    pages, at = [], 0
    while at < 5008:
        page = read(api, run_id, offset=at, limit=128)
        pages.append(page.content)
        at = int(page.headers["X-Output-Next-Offset"])
    assert b"".join(pages) == SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]


def test_the_legacy_result_holds_the_head_the_marker_and_the_tail(api: Api) -> None:
    command = api.create_command(SMALL, max_output_bytes=1000)
    run = api.wait_finished(api.start_run(command["id"])["id"])
    result = api.get(f"/command/result/{run['id']}").json()["result"]
    assert result == (SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]).decode()


def test_on_output_limit_stop_ends_the_run_stopped(api: Api) -> None:
    command = api.create_command(
        "yes run-on", on_output_limit="stop", max_output_bytes=100_000,
        restart={"policy": "always", "max_restarts": 5},
    )  # fmt: skip
    assert command["on_output_limit"] == "stop"
    run = api.wait_finished(api.start_run(command["id"])["id"])
    assert run["status"] == "stopped" and run["reason"] == "output_limit", run
    assert [a["reason"] for a in run["attempts"]] == ["output_limit"]  # never restarted
    assert run["output_truncated"] is True and run["output_bytes"] > 100_000
    output = api.output(run["id"])
    assert output.startswith(b"run-on\n" * 7) and marker(run["output_bytes"] - 100_000) in output


def test_a_run_that_exits_past_its_limit_with_stop_ends_stopped(api: Api) -> None:
    run = api.wait_finished(
        api.run_code(SMALL, max_output_bytes=1000, on_output_limit="stop")["id"]
    )
    assert (run["status"], run["reason"]) == ("stopped", "output_limit")
    assert api.output(run["id"]) == SMALL_OUTPUT[:500] + marker(4008) + SMALL_OUTPUT[-500:]


def test_a_run_may_tighten_the_limit_and_only_an_admin_loosen_it(service: Service) -> None:
    api = service.api
    command = api.create_command(SMALL, max_output_bytes=1000, on_output_limit="stop")
    operator = Api(api.base, token=OPERATOR)
    looser = operator.post(
        f"/api/v1/commands/{command['id']}/runs",
        json={"max_output_bytes": 2000, "on_output_limit": "truncate"},
    )
    assert looser.status_code == 403
    assert "max_output_bytes" in looser.text and "on_output_limit" in looser.text
    run = operator.start_run(command["id"], max_output_bytes=10)
    assert (run["max_output_bytes"], run["on_output_limit"]) == (10, "stop")
    run = api.wait_finished(api.start_run(command["id"], on_output_limit="truncate")["id"])
    assert (run["status"], run["on_output_limit"]) == ("succeeded", "truncate")
    bad = api.post(f"/api/v1/commands/{command['id']}/runs", json={"on_output_limit": "drop"})
    assert bad.status_code == 422 and "on_output_limit" in bad.text


def test_restarts_past_the_limit_keep_the_runs_head_and_its_last_tail(api: Api) -> None:
    # Each attempt writes 1,508 bytes; three of them, 4,524, past a limit of 1,000.
    code = 'printf "start $RUNVISOR_ATTEMPT\\n"; head -c 1500 /dev/zero | tr "\\0" x; exit 1'
    command = api.create_command(
        code, max_output_bytes=1000,
        restart={"policy": "on-failure", "max_restarts": 2, "backoff_s": 0.1},
    )  # fmt: skip
    run = api.wait_finished(api.start_run(command["id"])["id"], timeout_s=60)
    assert run["status"] == "failed" and len(run["attempts"]) == 3, run
    whole = b"".join(f"start {n}\n".encode() + b"x" * 1500 for n in (1, 2, 3))
    assert [a["output_offset"] for a in run["attempts"]] == [0, 1508, 3016]
    assert run["output_bytes"] == len(whole) == 4524
    assert run["output_gap"] == {"start": 500, "end": 4024}
    assert api.output(run["id"]) == whole[:500] + marker(3524) + whole[-500:]


def test_adoption_past_the_limit_keeps_head_and_tail(service_factory, database_url: str) -> None:
    first: Service = service_factory("node-limit-adopt")
    code = (
        "head -c 3000 /dev/zero | tr '\\0' a; while [ ! -e go ]; do sleep 0.1; done;"
        " head -c 3000 /dev/zero | tr '\\0' b; printf END"
    )
    run_id = first.api.run_code(code, max_output_bytes=1000)["id"]
    wait_until(lambda: first.api.run(run_id)["output_bytes"] == 3000, 30, "the first part")
    first.kill()  # a crash: the run goes on alone, its output waits in the spool
    (first.data_dir / "work" / str(run_id) / "go").touch()
    spool = first.data_dir / "spool" / str(run_id) / "1.out"
    wait_until(lambda: spool.stat().st_size == 6003, 30, "the second part in the spool")
    second: Service = service_factory("node-limit-adopt")
    run = second.api.wait_finished(run_id, timeout_s=60)
    assert run["status"] == "succeeded" and run["output_bytes"] == 6003, run
    assert run["output_gap"] == {"start": 500, "end": 5503}
    whole = b"a" * 3000 + b"b" * 3000 + b"END"
    assert second.api.output(run_id) == whole[:500] + marker(5003) + whole[-500:]
    assert stored_rows(database_url, run_id)[1] <= 1000


def test_a_gib_of_output_costs_bounded_memory_disk_and_rows(
    service: Service, database_url: str
) -> None:
    """1 GiB under the default limit (64 MiB): stored as head + marker + tail, while the node's
    RSS, the spool's blocks and the run's rows stay bounded and the node keeps answering."""
    api, pid = service.api, service.proc.pid if service.proc else 0
    limit = api.create_command("true")["max_output_bytes"]
    assert limit == 64 * MIB
    code = f"printf HEAD; head -c {GIB - 8} /dev/zero; printf TAIL; sleep 5"
    before = rss_mib(pid)
    run_id = api.run_code(code)["id"]
    spool = service.data_dir / "spool" / str(run_id) / "1.out"
    session = requests.Session()
    peak_rss, spool_peak, worst_health, worst_get = before, 0, 0.0, 0.0
    settled: int | None = None  # the spool's disk use once all was stored, the run still on
    status, deadline = "queued", time.monotonic() + 600
    while status not in ("succeeded", "failed", "stopped", "timed_out", "lost"):
        sent = time.monotonic()
        assert session.get(api.base + "/healthz", timeout=30).status_code == 200
        worst_health = max(worst_health, time.monotonic() - sent)
        sent = time.monotonic()
        seen = api.run(run_id)
        status = seen["status"]
        worst_get = max(worst_get, time.monotonic() - sent)
        if status == "running" and seen["output_bytes"] == GIB:
            # The least seen while the run sleeps: the last batch's hole is punched just after
            # its commit shows, so the first look may still count it (4 MiB).
            with contextlib.suppress(FileNotFoundError):
                now = allocated_bytes(spool)
                settled = now if settled is None else min(settled, now)
        peak_rss = max(peak_rss, rss_mib(pid))
        with contextlib.suppress(FileNotFoundError):
            spool_peak = max(spool_peak, allocated_bytes(spool))
        assert time.monotonic() < deadline, "the run did not end within 10 minutes"
    run = api.run(run_id)
    print(
        f"RSS {before:.0f} -> peak {peak_rss:.0f} MiB; spool peak {spool_peak / MIB:.0f} MiB,"
        f" {(settled or 0) / MIB:.1f} MiB once stored;"
        f" /healthz worst {worst_health * 1000:.0f} ms; GET run worst {worst_get * 1000:.0f} ms"
    )
    assert run["status"] == "succeeded", run
    assert run["output_bytes"] == GIB and run["output_truncated"] is True
    half = limit // 2
    assert run["output_gap"] == {"start": half, "end": GIB - half}
    rows, stored = stored_rows(database_url, run_id)
    assert stored <= limit + 256 * 1024 and rows <= 300, (rows, stored)
    response = read(api, run_id)
    assert response.headers["X-Output-Marker-At"] == str(half)
    body = response.content
    assert len(body) == limit + len(marker(GIB - limit))
    assert body[:4] == b"HEAD" and body[4:half] == b"\0" * (half - 4)
    assert body[half : half + len(marker(GIB - limit))] == marker(GIB - limit)
    assert body[-4:] == b"TAIL" and body[-half:-4] == b"\0" * (half - 4)
    assert peak_rss - before < 64, f"RSS grew from {before:.0f} to {peak_rss:.0f} MiB"
    # The spool holds what waits to be stored (a writer faster than PostgreSQL gets ahead by
    # what it writes during a batch): never the whole output; once stored, next to nothing.
    assert spool_peak < GIB // 2, f"the spool took {spool_peak / MIB:.0f} MiB"
    assert settled is not None and settled < 4 * MIB, settled
    assert worst_health < 1.0 and worst_get < 1.0, (worst_health, worst_get)
