"""`runvisor logs -f` and `run --follow`: output as it comes, exit status of the run."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

from tests.client.cli_runner import cli_env
from tests.fix_service import Api, Service


class Follower:
    """The CLI in a subprocess, its stdout read a line at a time as it comes."""

    def __init__(self, service: Service, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runvisor", *args],
            env=cli_env(service),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.out = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.put(line)
        self.lines.put(b"")

    def next_line(self, timeout_s: float = 30) -> bytes:
        line = self.lines.get(timeout=timeout_s)
        self.out += line
        return line

    def finish(self, timeout_s: float = 60) -> tuple[int, bytes, str]:
        """Exit status, all of stdout, and stderr."""
        while self.next_line(timeout_s):
            pass
        status = self.proc.wait(timeout_s)
        assert self.proc.stderr is not None
        return status, self.out, self.proc.stderr.read().decode()


def output_requests(api: Api) -> float:
    """How many output reads the node has answered (its /metrics)."""
    text = api.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("runvisor_http_requests_total{")
        and 'route="/api/v1/runs/{id}/output"' in line
    )


def test_logs_follow_prints_as_it_comes_and_exits_with_the_runs_exit_code(
    service: Service, api: Api
) -> None:
    run = api.run_code("for i in $(seq 1 8); do echo line $i; sleep 0.4; done; exit 7")
    reads_before = output_requests(api)
    follower = Follower(service, "logs", "-f", str(run["id"]))
    started = time.monotonic()
    assert follower.next_line() == b"line 1\n"
    # The first line came while the run was still going (it takes over 3 s).
    assert api.run(run["id"])["status"] == "running"
    first_after_s = time.monotonic() - started
    status, out, err = follower.finish()
    assert status == 7, err
    # One followed stream for the whole run, and the read after its end: no polling.
    assert output_requests(api) - reads_before == 2
    assert out == api.output(run["id"]) == b"".join(b"line %d\n" % i for i in range(1, 9))
    ended = api.run(run["id"])
    assert ended["status"] == "failed" and ended["exit_code"] == 7
    assert err.strip() == f"runvisor: run {run['id']} failed: exit code 7 (exit status 7)"
    print(f"first line after {first_after_s:.2f} s")


def test_run_follow_of_a_run_that_succeeds_exits_0(service: Service, api: Api) -> None:
    command = api.create_command('printf "%s\\n" "$WHO"; sleep 1; printf done', env={"WHO": None})
    follower = Follower(service, "run", str(command["id"]), "--env", "WHO=me", "--follow")
    assert follower.next_line() == b"me\n"
    status, out, err = follower.finish()
    assert status == 0 and out == b"me\ndone", err
    run_id = int(err.strip().removeprefix("runvisor: started run "))
    assert api.run(run_id)["status"] == "succeeded"


def test_logs_follow_of_a_stopped_run_exits_128_plus_the_signal(service: Service, api: Api) -> None:
    run = api.run_code("echo started; while :; do sleep 0.1; done")
    follower = Follower(service, "logs", "--follow", str(run["id"]))
    assert follower.next_line() == b"started\n"
    stop = subprocess.run(
        [sys.executable, "-m", "runvisor", "stop", str(run["id"]), "--grace", "5"],
        env=cli_env(service),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    status, out, err = follower.finish()
    assert status == 128 + 15, err
    assert out == b"started\n"
    assert err.startswith(f"runvisor: run {run['id']} stopped: signal 15, stopped by admin:")
    assert err.strip().endswith("(exit status 143)")


def test_logs_follow_goes_on_across_a_restart_of_the_node(service: Service, api: Api) -> None:
    run = api.run_code("for i in $(seq 1 40); do echo line $i; sleep 0.25; done")
    follower = Follower(service, "logs", "-f", str(run["id"]))
    assert follower.next_line() == b"line 1\n"
    # SIGTERM: the node detaches from its runs, which go on; the next start adopts them.
    assert service.stop() == 0
    service.start()
    status, out, err = follower.finish(timeout_s=90)
    assert status == 0, err
    expected = b"".join(b"line %d\n" % i for i in range(1, 41))
    assert out == api.output(run["id"]) == expected  # no byte lost or written twice
    assert "reconnecting to" in err


def test_ctrl_c_ends_logs_follow_with_130_and_no_traceback(service: Service, api: Api) -> None:
    run = api.run_code("echo started; while :; do sleep 0.1; done")
    follower = Follower(service, "logs", "-f", str(run["id"]))
    assert follower.next_line() == b"started\n"
    follower.proc.send_signal(signal.SIGINT)
    status, out, err = follower.finish()
    assert status == 130 and out == b"started\n"
    assert err == ""
    assert api.run(run["id"])["status"] == "running"  # the run is not the client's to stop
