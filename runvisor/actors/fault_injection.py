"""Faults the end-to-end tests inject into a node started with RUNVISOR_TEST_HOOKS on: a run
that prints a marker makes its RunActor fail, or stop answering for a while, so that the tests
see what the Supervisor does then. Off (the default), output is never looked at."""

from __future__ import annotations

import time

from structlog.stdlib import BoundLogger

from runvisor.actors.output_pump import OutputPump

FAIL_ACTOR_MARKER = b"@@runvisor-test:fail-actor@@"
WEDGE_ACTOR_MARKER = b"@@runvisor-test:wedge-actor@@"


def inject_faults(pump: OutputPump, *, ping_timeout_s: float, log: BoundLogger) -> None:
    """Act on a marker in the output the last flush stored (kept by the pump for this)."""
    stored, pump.last_stored = pump.last_stored, b""
    if FAIL_ACTOR_MARKER in stored:
        raise RuntimeError("failure injected by a test hook")
    if WEDGE_ACTOR_MARKER in stored:
        log.warning("test hook: this actor stops answering for a while")
        time.sleep(3 * ping_timeout_s)
