"""ConnectionGuard: a cap on one listening socket's connections, and deadlines for idle ones.

Below the HTTP server (any asyncio protocol factory): each accepted connection is wrapped, so
that the guard knows when it last sent a byte and whether a request's header block has arrived.
What it enforces, so that no client can hold the file descriptors the sinks need:
- at most `max_connections` at once: a new one beyond that replaces the quietest connection
  that has not sent a request yet, else the quietest kept-alive one if it has been quiet for
  `QUIET_S` (one that just sent a request is being answered), else it is answered 503 and
  closed. A scraper sends its request as soon as it connects, so idle connections, however
  many and however often reopened, give way to it;
- a request's header block must arrive within `header_timeout_s` of the connection (or of its
  previous request plus `idle_timeout_s`, for a kept-alive connection): idle connections that
  never send a request, and headers sent a byte at a time, are closed.
The real protocol (aiohttp's request handler) is made only when a connection's first byte
arrives, so a connection that never sends one costs a small object, not a handler and a task.
Closing is an abort (RST): the descriptor is free at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import HttpRejectReason

# A connection that sent a byte this recently is taken to be in the middle of a request.
QUIET_S = 1.0
SWEEP_S = 1.0
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\n\r\ntoo many connections\n"
)


class ConnectionGuard:
    """A protocol factory for `loop.create_server` that wraps `factory`'s protocols."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
        idle_timeout_s: float,
        on_close: Callable[[HttpRejectReason], None],
    ) -> None:
        self.factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._on_close = on_close
        # Open connections, the quietest first (a read moves a connection to the end).
        self.open: OrderedDict[_Guarded, None] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Connections open now."""
        return len(self.open)

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.max_connections:
            victim = self._victim()
            if victim is None:
                self._on_close("max_connections")
                return _Refused()
            self.close(victim, "max_connections")
        return _Guarded(self)

    def start(self) -> None:
        """Enforce the header deadlines (a timer on the running loop) until `stop()`."""
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def close(self, connection: _Guarded, reason: HttpRejectReason) -> None:
        """Abort a connection now, and count why."""
        self.open.pop(connection, None)
        if connection.abort():
            self._on_close(reason)

    def _victim(self) -> _Guarded | None:
        """The connection to close for a new one: the quietest of those that have not sent a
        request yet, else the quietest kept-alive one, if it has been quiet for QUIET_S."""
        quiet_since = time.monotonic() - QUIET_S
        quiet = None
        for connection in self.open:  # quietest first
            if connection.awaiting_request:
                return connection
            if quiet is None and connection.last_read < quiet_since:
                quiet = connection
        return quiet

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self.open if c.header_deadline < now]:
            self.close(connection, "header_timeout")
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)


class _Guarded(asyncio.Protocol):
    """One connection: watches its reads, and hands everything to the real protocol, which it
    makes when the first byte arrives."""

    __slots__ = (
        "_guard",
        "_inner",
        "_tail",
        "_transport",
        "awaiting_request",
        "header_deadline",
        "last_read",
    )

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._tail = b""
        self.last_read = time.monotonic()
        self.header_deadline = self.last_read + guard.header_timeout_s
        self.awaiting_request = True  # no request's header block has arrived yet

    def abort(self) -> bool:
        """Close at once; False when it was closing already."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.abort()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._guard.open[self] = None

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        now = self.last_read = time.monotonic()
        if self in guard.open:
            guard.open.move_to_end(self)
        # The end of a header block (CRLF CRLF, or bare LFs), also when split across reads.
        seen = self._tail + data
        if b"\r\n\r\n" in seen or b"\n\n" in seen:
            self.header_deadline = now + guard.idle_timeout_s + guard.header_timeout_s
            self.awaiting_request = False
        self._tail = data[-3:]
        inner = self._inner
        if inner is None:
            assert self._transport is not None
            inner = self._inner = guard.factory()
            inner.connection_made(self._transport)
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return False  # nothing was asked: close
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.open.pop(self, None)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """Answers 503 and closes, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()
