"""Runs end to end through a real node: output, exit statuses, bytes, concurrency, env."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from tests.fix_service import Api, wait_until

FLUSH_INTERVAL_S = 0.2  # what fix_service configures
LATENESS_SLACK_S = 0.5  # HTTP, scheduling and the 2-core machine


def test_output_is_visible_while_running_and_complete_after(api: Api) -> None:
    run = api.run_code("for i in 1 2 3 4 5; do echo $i; sleep 1; done")
    expected = b"1\n2\n3\n4\n5\n"
    first_seen: dict[int, float] = {}
    seen_while_running = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = api.run(run["id"])
        output = api.output(run["id"])
        now = time.monotonic()
        assert expected.startswith(output), output
        lines = output.count(b"\n")
        for k in range(1, lines + 1):
            first_seen.setdefault(k, now)
        if current["status"] == "running":
            seen_while_running = output
        if current["status"] != "running" and current["status"] != "queued":
            break
        time.sleep(0.05)
    assert seen_while_running.count(b"\n") >= 3, "output was not visible while the run ran"
    # Line k is printed (k-1) s after line 1; it must show up at most one flush interval late.
    for k in range(2, 6):
        lateness = first_seen[k] - first_seen[1] - (k - 1)
        assert lateness <= FLUSH_INTERVAL_S + LATENESS_SLACK_S, (k, lateness)
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded"
    assert final["exit_code"] == 0 and final["signal"] is None
    assert api.output(run["id"]) == expected
    assert final["output_bytes"] == len(expected)
    assert len(final["attempts"]) == 1 and final["attempts"][0]["exit_code"] == 0


def test_exit_code_makes_the_run_failed(api: Api) -> None:
    run = api.wait_finished(api.run_code("echo bad; exit 3")["id"])
    assert run["status"] == "failed"
    assert run["exit_code"] == 3 and run["signal"] is None
    assert api.output(run["id"]) == b"bad\n"


def test_a_run_killed_by_a_signal_records_the_signal(api: Api) -> None:
    run = api.wait_finished(api.run_code("echo before; kill -KILL $$")["id"])
    assert run["status"] == "failed"
    assert run["signal"] == 9 and run["exit_code"] is None
    assert api.output(run["id"]) == b"before\n"


def test_ten_mebibytes_of_random_bytes_come_back_byte_exact(api: Api, shared_dir: Path) -> None:
    side = shared_dir / "random.bin"
    run = api.run_code(f"head -c 10485760 /dev/urandom | tee {side}")
    final = api.wait_finished(run["id"], timeout_s=60)
    assert final["status"] == "succeeded", final
    stored = api.output(run["id"])
    assert len(stored) == 10 * 1024 * 1024
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(side.read_bytes()).hexdigest()
    # Reading from an offset gives the same bytes as slicing.
    part = api.get(f"/api/v1/runs/{run['id']}/output?offset=1000000&limit=300000").content
    assert part == stored[1000000:1300000]


def test_a_single_one_mebibyte_line(api: Api) -> None:
    run = api.run_code("head -c 1048576 /dev/zero | tr '\\0' 'x'; echo")
    final = api.wait_finished(run["id"], timeout_s=30)
    assert final["status"] == "succeeded"
    assert api.output(run["id"]) == b"x" * 1048576 + b"\n"


def test_stderr_is_captured_in_order(api: Api) -> None:
    run = api.run_code("echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    api.wait_finished(run["id"])
    assert api.output(run["id"]) == b"out1\nerr1\nout2\nerr2\n"


def test_a_run_that_writes_then_exits_at_once_loses_nothing(api: Api) -> None:
    run = api.run_code("seq 1 20000; printf 'no newline at the end'")
    api.wait_finished(run["id"])
    expected = "".join(f"{i}\n" for i in range(1, 20001)).encode() + b"no newline at the end"
    assert api.output(run["id"]) == expected


def test_the_run_environment_holds_none_of_the_service_settings(api: Api) -> None:
    command = api.create_command("env", env={"GREETING": None})
    run = api.start_run(command["id"], env={"GREETING": "hello"})
    api.wait_finished(run["id"])
    names = {line.split("=", 1)[0] for line in api.output(run["id"]).decode().splitlines()}
    values = api.output(run["id"]).decode()
    assert "GREETING" in names and "RUNVISOR_RUN_ID" in names
    for secret_name in ("RUNVISOR_DATABASE_URL", "RUNVISOR_REDIS_URL", "RUNVISOR_TOKENS"):
        assert secret_name not in names
    assert "secret-token" not in values and "postgresql://" not in values


def test_a_hundred_runs_at_once_all_finish_with_their_own_output(api: Api) -> None:
    command = api.create_command('echo "run $RUNVISOR_RUN_ID"; sleep 0.5; echo done')
    runs = [api.start_run(command["id"]) for _ in range(100)]
    for run in runs:
        final = api.wait_finished(run["id"], timeout_s=60)
        assert final["status"] == "succeeded", final
        assert api.output(run["id"]) == f"run {run['id']}\ndone\n".encode()


def test_output_reads_accept_offsets_past_the_end(api: Api) -> None:
    run = api.wait_finished(api.run_code("printf abc")["id"])
    assert api.get(f"/api/v1/runs/{run['id']}/output?offset=2").content == b"c"
    assert api.get(f"/api/v1/runs/{run['id']}/output?offset=10").content == b""


def test_list_runs_filters_by_command_and_status(api: Api) -> None:
    ok = api.create_command("true")
    bad = api.create_command("false")
    ok_run = api.wait_finished(api.start_run(ok["id"])["id"])
    bad_run = api.wait_finished(api.start_run(bad["id"])["id"])
    page = api.get(f"/api/v1/runs?command_id={ok['id']}").json()
    assert [r["id"] for r in page["items"]] == [ok_run["id"]] and page["total"] == 1
    failed = api.get("/api/v1/runs?status=failed").json()
    assert [r["id"] for r in failed["items"]] == [bad_run["id"]]


def test_wait_helper_fails_at_its_deadline() -> None:
    started = time.monotonic()
    try:
        wait_until(lambda: False, 0.2, "nothing")
    except AssertionError as exc:
        assert "nothing" in str(exc)
    else:
        raise AssertionError("wait_until did not fail")
    assert time.monotonic() - started < 2


def test_each_run_starts_in_its_own_working_directory_removed_at_the_end(service, api: Api) -> None:
    run = api.wait_finished(api.run_code("pwd; ls -A | wc -l; touch scratch")["id"])
    cwd, entries = api.output(run["id"]).decode().split()
    assert cwd == str(service.data_dir / "work" / str(run["id"])) and entries == "0"
    wait_until(
        lambda: not (service.data_dir / "work" / str(run["id"])).exists(),
        5,
        "the working directory to be removed",
    )
    assert not (service.data_dir / "spool" / str(run["id"])).exists()


def test_output_is_flushed_sooner_once_256_kib_are_waiting(service_factory) -> None:
    service = service_factory(RUNVISOR_FLUSH_INTERVAL_S="5")
    api = service.api
    small = api.run_code("printf small; sleep 30")
    big = api.run_code("head -c 400000 /dev/zero | tr '\\0' a; sleep 30")
    started = time.monotonic()
    wait_until(
        lambda: api.run(big["id"])["output_bytes"] >= 256 * 1024,
        3,
        "the big output to be stored before the 5 s flush tick",
    )
    assert time.monotonic() - started < 3
    # Below the threshold, output waits for the tick.
    assert api.run(small["id"])["output_bytes"] == 0
    wait_until(lambda: api.run(big["id"])["output_bytes"] == 400000, 10, "all of it")
