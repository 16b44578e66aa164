"""`logs -f` and `run --follow`: a run's output as it comes, then its end as an exit status."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from runvisor.client.api import JSON, RunvisorClient
from runvisor.client.errors import RUN_FAILED, UNREACHABLE, ClientError

TERMINAL = frozenset({"succeeded", "failed", "stopped", "timed_out", "lost"})
# A stream cut or a node that does not answer (it restarts; a proxy timed out) is retried, from
# the last byte received, for this long after the first failure in a row.
RECONNECT_WINDOW_S = 60.0


def follow_run(client: RunvisorClient, run_id: int, *, offset: int = 0) -> JSON:
    """Write the run's output from `offset` to stdout as it arrives, until the run has ended
    and its last byte is written; answer the ended run.

    `?follow=1` streams until the run ends. Whatever cut the stream short, the loop reads the
    run and carries on from the bytes it has, so no byte is written twice or skipped.
    """
    sink = StdoutSink(offset)
    client.run(run_id)  # a wrong id, token or URL fails here, at once, before any retry
    retry = _Reconnects(client.target.url)
    while True:
        try:
            client.output(run_id, offset=sink.offset, follow=True, write=sink.write)
            # Answers at once when the run has ended; otherwise paces the next request.
            run = client.run(run_id, wait_s=1)
        except (httpx.TransportError, ClientError) as exc:
            retry.after(exc)
            continue
        retry.succeeded()
        if run["status"] in TERMINAL:
            # The stream ended with the run; anything stored after it closed comes now.
            client.output(run_id, offset=sink.offset, follow=False, write=sink.write)
            return run


class _Reconnects:
    """Whether to try again after a failure, and how long to wait first: failures in a row are
    retried for RECONNECT_WINDOW_S from the first of them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0
        self.outage_since = 0.0

    def succeeded(self) -> None:
        self.failures = 0

    def after(self, exc: Exception) -> None:
        """Return to retry; re-raise what cannot get better (a 404, a 401) or has lasted too
        long."""
        if isinstance(exc, ClientError) and exc.exit_status != UNREACHABLE:
            raise exc
        now = time.monotonic()
        if self.failures == 0:
            self.outage_since = now
            # stderr: stdout carries the run's output only.
            print(f"runvisor: reconnecting to {self.url} ({_what(exc)})", file=sys.stderr)
        elif now - self.outage_since > RECONNECT_WINDOW_S:
            if isinstance(exc, ClientError):
                raise exc
            raise ClientError(
                f"lost the connection to {self.url}: {_what(exc)}", exit_status=UNREACHABLE
            ) from None
        self.failures += 1
        time.sleep(min(0.2 * self.failures, 2.0))


def _what(exc: Exception) -> str:
    return exc.message if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"


class StdoutSink:
    """stdout, flushed at every chunk (a person watches, or a pipe reads line by line), and the
    offset in the run's output of the next byte to come."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._out = sys.stdout.buffer

    def write(self, chunk: bytes) -> None:
        self._out.write(chunk)
        self._out.flush()
        self.offset += len(chunk)


def run_exit_status(run: dict[str, Any]) -> int:
    """The exit status `logs -f` ends with: 0 for a run that succeeded; its last attempt's exit
    code; 128 + the signal that killed it (as a shell reports it); 1 for any other end (stopped
    before it started, lost)."""
    if run["status"] == "succeeded":
        return 0
    exit_code = run.get("exit_code")
    if isinstance(exit_code, int) and exit_code != 0:
        return exit_code
    signal = run.get("signal")
    if isinstance(signal, int):
        return 128 + signal
    return RUN_FAILED


def describe_end(run: dict[str, Any]) -> str:
    """One line for stderr about a run that did not succeed: what the exit status stands for."""
    parts = [f"run {run['id']} {run['status']}"]
    if run.get("exit_code") is not None:
        parts.append(f"exit code {run['exit_code']}")
    if run.get("signal") is not None:
        parts.append(f"signal {run['signal']}")
    if run.get("reason") and run["reason"] != "exited":  # exited: said by the exit code
        parts.append(str(run["reason"]))
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
