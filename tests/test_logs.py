"""Logging set-up: a logger taken at import follows the configuration made later."""

from __future__ import annotations

import json

import pytest

from runvisor.logs import configure_logging, get_logger


def test_a_logger_taken_before_configure_logging_follows_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = get_logger("runvisor.test_early", run_id=7)  # as a module does at import
    configure_logging(log_format="json")
    log.info("said after the set-up")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    line = json.loads(last)  # JSON as configured, not structlog's default console lines
    assert line["event"] == "said after the set-up" and line["run_id"] == 7
