"""A run's events channel as its readers see it: the messages LiveState publishes there, and the
tail of output kept beside them (the HTTP side's live streams read both).

Two kinds of message on `RedisKeys.run_events(run_id)`:
- output: one JSON line `{"type": "output", "start": S, "offset": E, "bytes": N}`, a newline,
  then the N raw bytes at offsets [S, E) of the run's output;
- status: a JSON object `{"type": "status", "status": ..., ...}`, the run's new live state.
Offsets on every output message let a reader tell when it missed bytes (S beyond what it has),
and fill the hole from PostgreSQL or from the tail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from runvisor.store.redis_keys import RedisKeys


@dataclass(frozen=True, slots=True)
class OutputEvent:
    start: int  # the offset of data's first byte in the run's output
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    status: str


LiveEvent = OutputEvent | StatusEvent


def parse_event(raw: bytes) -> LiveEvent | None:
    """One message of the events channel; None for one that is not understood."""
    header, newline, rest = raw.partition(b"\n")
    try:
        fields: Any = json.loads(header)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    kind = fields.get("type")
    if kind == "output" and newline:
        start = fields.get("start")
        if not isinstance(start, int) or start < 0 or fields.get("bytes") != len(rest):
            return None
        return OutputEvent(start=start, data=rest)
    if kind == "status" and isinstance(fields.get("status"), str):
        return StatusEvent(status=fields["status"])
    return None


async def read_tail(redis: aioredis.Redis, keys: RedisKeys, run_id: int) -> OutputEvent | None:
    """The output tail kept in Redis, with its place in the run's output; None when there is
    none. Raises redis.RedisError and OSError when Redis cannot answer."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(keys.run_state(run_id), "tail_end")
        pipe.get(keys.run_tail(run_id))
        tail_end, tail = await pipe.execute()
    if tail_end is None or tail is None:
        return None
    end = int(tail_end)
    return OutputEvent(start=end - len(tail), data=bytes(tail))
