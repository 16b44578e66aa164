"""runvisor.http.health: why a store is down is always said, even for errors without text."""

from __future__ import annotations

import pytest
import redis.exceptions

from runvisor.errors import StoreUnavailable
from runvisor.http.health import down_reason


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "TimeoutError: no answer within 2 s"),  # asyncio.wait_for's
        (ConnectionError(), "ConnectionError"),
        (redis.exceptions.ConnectionError(), "ConnectionError"),
        (redis.exceptions.TimeoutError(""), "TimeoutError"),
        (OSError("   "), "OSError"),
        (redis.exceptions.ConnectionError("Error 111 connecting"), "Error 111 connecting"),
        (
            StoreUnavailable("PostgreSQL is unavailable: refused"),
            "PostgreSQL is unavailable: refused",
        ),
        (OSError("first line\nsecond line"), "first line"),
    ],
)
def test_the_reason_is_never_empty(exc: BaseException, reason: str) -> None:
    assert down_reason(exc) == reason
