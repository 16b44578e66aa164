"""The legacy `result` is a bounded tail of the output: never the whole output in memory.

A viewer asking for the result of a run with 64 MiB of output once took the node to over 1 GB
of RSS and blocked its event loop for seconds; eight at once took 7 GB. Now `result` holds at
most RUNVISOR_LEGACY_RESULT_BYTES (the tail, after a marker line), read as a byte range and
encoded off the event loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import requests

from tests.fix_service import ADMIN, Api, Service

MIB = 1024 * 1024
NUL_RUN = "head -c 67108864 /dev/zero"  # 64 MiB: the default max_output_bytes
CONCURRENT = 8

# Sends CONCURRENT requests at once from another process (its GIL and its memory are not the
# test's), then prints, as JSON, when they ran (CLOCK_MONOTONIC, shared by every process) and
# what each got.
CLIENT = r"""
import http.client, json, sys, threading, time
port, path, token, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
barrier, answers = threading.Barrier(n), []
def get():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    barrier.wait()
    conn.request("GET", path, headers={"Authorization": "Bearer " + token})
    response = conn.getresponse()
    body = response.read()
    answers.append((response.status, response.getheader("Content-Type"), body))
started = time.monotonic()
threads = [threading.Thread(target=get) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
ended = time.monotonic()
summary = []
for status, content_type, body in answers:
    is_json = status == 200 and content_type.startswith("application/json")
    result = json.loads(body).get("result", "") if is_json else ""
    summary.append({"status": status, "content_type": content_type, "bytes": len(body),
                    "result_head": result[:200], "result_chars": len(result),
                    "result_tail_is_nul": set(result[-MIB:]) == {"\0"} if result else False})
print(json.dumps({"started": started, "ended": ended, "answers": summary}))
""".replace("MIB", str(MIB))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def finished_run(api: Api, code: str, timeout_s: float = 120) -> dict[str, Any]:
    run = api.wait_finished(api.run_code(code)["id"], timeout_s=timeout_s)
    assert run["status"] == "succeeded", run
    return run


def under_load(
    service: Service, path: str, n: int = CONCURRENT
) -> tuple[dict[str, Any], float, list[tuple[float, float]]]:
    """Send `n` requests for `path` at once from another process. Meanwhile, poll /healthz and
    sample the node's RSS. Returns the client's report, the RSS peak (MiB) and (time, latency)
    of every /healthz answer."""
    assert service.proc is not None
    pid, peak, healthz = service.proc.pid, 0.0, []
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(service.port), path, ADMIN, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    session = requests.Session()
    while client.poll() is None:
        peak = max(peak, rss_mib(pid))
        sent = time.monotonic()
        assert session.get(service.api.base + "/healthz", timeout=30).status_code == 200
        healthz.append((sent, time.monotonic() - sent))
        peak = max(peak, rss_mib(pid))
    out, err = client.communicate()
    assert client.returncode == 0, err.decode()
    return json.loads(out), peak, healthz


def test_eight_viewers_of_a_64_mib_output_cost_the_node_little(service: Service) -> None:
    run = finished_run(service.api, NUL_RUN)
    assert run["output_bytes"] == 64 * MIB
    assert service.proc is not None
    before = rss_mib(service.proc.pid)
    report, peak, healthz = under_load(service, f"/command/result/{run['id']}")

    marker = (
        f"[runvisor: first {63 * MIB} bytes not shown;"
        f" GET /api/v1/runs/{run['id']}/output has the whole output]\n"
    )
    assert len(report["answers"]) == CONCURRENT
    for answer in report["answers"]:
        assert answer["status"] == 200 and answer["content_type"].startswith("application/json")
        assert answer["result_head"] == marker + "\0" * (200 - len(marker))
        assert answer["result_chars"] == len(marker) + MIB and answer["result_tail_is_nul"]
    during = [latency for at, latency in healthz if report["started"] <= at <= report["ended"]]
    assert len(during) >= 3, f"too few /healthz samples while the requests ran: {healthz}"
    worst = max(latency for _, latency in healthz)
    print(f"RSS {before:.0f} -> peak {peak:.0f} MiB; /healthz worst {worst * 1000:.0f} ms")
    assert peak - before < 64, f"RSS grew from {before:.0f} MiB to {peak:.0f} MiB"
    assert worst < 0.1, f"/healthz took {worst * 1000:.0f} ms while the results were served"


def test_the_v1_output_of_64_mib_streams_in_bounded_memory(service: Service) -> None:
    run = finished_run(service.api, NUL_RUN)
    assert service.proc is not None
    before = rss_mib(service.proc.pid)
    report, peak, _ = under_load(service, f"/api/v1/runs/{run['id']}/output", n=2)
    assert [a["status"] for a in report["answers"]] == [200, 200]
    assert [a["bytes"] for a in report["answers"]] == [64 * MIB, 64 * MIB]
    print(f"RSS {before:.0f} -> peak {peak:.0f} MiB")
    assert peak - before < 32, f"RSS grew from {before:.0f} MiB to {peak:.0f} MiB"


def legacy_get(api: Api, path: str) -> dict[str, Any]:
    response = api.get(path, headers={"token": ADMIN}, token="")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return dict(response.json())


def marker_of(skipped: int, run_id: int) -> str:
    return (
        f"[runvisor: first {skipped} bytes not shown;"
        f" GET /api/v1/runs/{run_id}/output has the whole output]\n"
    )


def test_the_result_is_the_tail_after_a_marker_in_both_legacy_reads(api: Api) -> None:
    run = finished_run(api, "seq 1 400000")
    whole = api.output(run["id"])
    assert len(whole) > 2 * MIB
    expected = marker_of(len(whole) - MIB, run["id"]) + whole[-MIB:].decode()
    assert legacy_get(api, f"/command/result/{run['id']}")["result"] == expected
    shown = legacy_get(api, f"/command/{run['command_id']}")
    assert shown["last_run_id"] == run["id"] and shown["result"] == expected
    assert list(shown) == [
        "id", "code", "description", "created_at", "last_run_id", "last_run_status", "result"
    ]  # fmt: skip


def test_a_result_that_fits_is_exact_without_a_marker(api: Api) -> None:
    exactly = finished_run(api, "head -c 1048576 /dev/zero | tr '\\0' 'y'")
    assert legacy_get(api, f"/command/result/{exactly['id']}")["result"] == "y" * MIB
    small = finished_run(api, "printf 'small\\n'")
    assert legacy_get(api, f"/command/result/{small['id']}")["result"] == "small\n"


def test_the_tail_starts_at_a_character_and_the_limit_is_a_setting(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_LEGACY_RESULT_BYTES="1024")
    api = service.api
    # 1000 times "é" (2 bytes each) and a newline: 2001 bytes. The last 1024 start at byte 977,
    # the second byte of an "é": it is left out too, and counted.
    run = finished_run(api, "for i in $(seq 1000); do printf '\\303\\251'; done; echo")
    assert run["output_bytes"] == 2001
    result = legacy_get(api, f"/command/result/{run['id']}")["result"]
    assert result == marker_of(978, run["id"]) + "é" * 511 + "\n"
    fits = finished_run(api, "head -c 1024 /dev/zero | tr '\\0' 'z'")
    assert legacy_get(api, f"/command/result/{fits['id']}")["result"] == "z" * 1024
