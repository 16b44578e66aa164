"""Expensive reads (output streams, legacy results): how many at once, and how long a client may
take to read them.

A stream holds one piece of output (at most 64 KiB, runvisor.store.history) and what its socket
has not taken, so the cap on streams bounds the memory viewers can make the node hold; the write
timeout frees the slot (and the memory) of a client that stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

from aiohttp import web

from runvisor.errors import TooManyRequests

# Bytes handed to aiohttp per write: what it buffers for a client that has not read them yet
# (it drains once past 64 KiB), and what a client must take within the write timeout.
WRITE_SLICE_BYTES = 64 * 1024


class ClientTooSlow(ConnectionResetError):
    """The client did not take a write within the write timeout; the node has reset the
    connection."""


class StreamSlots:
    """Expensive reads under way on this node: at most `max_streams`, and `max_per_token` for
    each token. The event loop is the only user, so plain counters suffice."""

    def __init__(
        self,
        *,
        max_streams: int,
        max_per_token: int,
        what: str = "output streams",
        node_limit: str = "RUNVISOR_MAX_OUTPUT_STREAMS",
        token_limit: str = "RUNVISOR_MAX_OUTPUT_STREAMS_PER_TOKEN",
    ) -> None:
        self.max_streams = max_streams
        self.max_per_token = max_per_token
        self._what, self._node_limit, self._token_limit = what, node_limit, token_limit
        self._by_holder: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        return self._by_holder.total()

    @contextmanager
    def hold(self, holder: str) -> Iterator[None]:
        """A slot for `holder` (the principal's name) while the block runs; TooManyRequests
        (429) when none is free."""
        if self.in_use >= self.max_streams:
            raise TooManyRequests(
                f"this node is serving {self.max_streams} {self._what} already"
                f" ({self._node_limit}); retry shortly",
                code="too_many_streams",
            )
        if self._by_holder[holder] >= self.max_per_token:
            raise TooManyRequests(
                f"this token is reading {self.max_per_token} {self._what} already"
                f" ({self._token_limit}); retry when one has ended",
                code="too_many_streams",
            )
        self._by_holder[holder] += 1
        try:
            yield
        finally:
            self._by_holder[holder] -= 1
            if not self._by_holder[holder]:
                del self._by_holder[holder]


async def write_within(
    request: web.Request, response: web.StreamResponse, data: bytes | memoryview, timeout_s: float
) -> None:
    """Write `data` a slice at a time. A client that takes no slice within `timeout_s` is cut
    off (ClientTooSlow): aiohttp would wait for it forever, holding the slice and the slot."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_SLICE_BYTES):
        await _bounded(request, response.write(view[start : start + WRITE_SLICE_BYTES]), timeout_s)


async def finish_within(
    request: web.Request, response: web.StreamResponse, timeout_s: float
) -> None:
    """write_eof, which waits for the client to take what is buffered, within `timeout_s`."""
    await _bounded(request, response.write_eof(), timeout_s)


async def _bounded(request: web.Request, write: Awaitable[None], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(write, timeout_s)
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            # A reset, at once: close() would wait to flush what the client does not read, and
            # the kernel would keep the socket's buffers for it.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise ClientTooSlow(
            f"the client did not take a write of up to {WRITE_SLICE_BYTES // 1024} KiB within"
            f" {timeout_s:g} s (RUNVISOR_OUTPUT_WRITE_TIMEOUT_S)"
        ) from None
