"""runvisor.http.streams.StreamSlots: a node-wide and a per-token cap on expensive reads."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from runvisor.errors import TooManyRequests
from runvisor.http.streams import StreamSlots


def test_the_per_token_cap_refuses_that_token_only() -> None:
    slots = StreamSlots(max_streams=10, max_per_token=2)
    with ExitStack() as held:
        held.enter_context(slots.hold("viewer:aaaa"))
        held.enter_context(slots.hold("viewer:aaaa"))
        with pytest.raises(TooManyRequests) as refused:
            held.enter_context(slots.hold("viewer:aaaa"))
        assert refused.value.status == 429 and refused.value.code == "too_many_streams"
        assert "RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN" in refused.value.message
        held.enter_context(slots.hold("admin:bbbb"))  # another token still gets one
        assert slots.in_use == 3
    assert slots.in_use == 0


def test_the_node_cap_refuses_everyone_until_a_slot_is_released() -> None:
    slots = StreamSlots(max_streams=2, max_per_token=2)
    with ExitStack() as held:
        held.enter_context(slots.hold("viewer:aaaa"))
        held.enter_context(slots.hold("admin:bbbb"))
        with pytest.raises(TooManyRequests) as refused:
            held.enter_context(slots.hold("operator:cccc"))
        assert "(RUNVISOR_MAX_OUTPUT_STREAMS)" in refused.value.message
        assert slots.in_use == 2  # a refusal takes nothing
    with slots.hold("operator:cccc"):
        assert slots.in_use == 1


def test_a_slot_is_released_when_the_read_fails() -> None:
    slots = StreamSlots(max_streams=1, max_per_token=1)
    with pytest.raises(ConnectionResetError), slots.hold("viewer:aaaa"):
        raise ConnectionResetError("client went away")
    assert slots.in_use == 0
    with slots.hold("viewer:aaaa"):
        assert slots.in_use == 1
