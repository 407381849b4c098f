"""uvicorn's HTTP protocol for the admin daemon: a deadline and a size cap for a request's
headers, Nagle off, and each answer in one write.

uvicorn closes a keep-alive connection that stays silent, but a client that sends a byte now and
then (half a request line, one header every few seconds: "slowloris") keeps its connection, and
so a slot of the daemon, forever. ``header_timeout_protocol(seconds)`` is uvicorn's httptools
protocol with one timer more: armed when a connection opens and again when it goes idle between
two keep-alive requests, cancelled once a request's headers are complete; if it fires first, the
connection is closed. A slow *body* is not covered: bodies are capped (``max_body``).

The parser is httptools (llhttp, in C) rather than h11 (pure Python): per ``POST /jobs`` it cost
the daemon about a fifth less CPU. h11 refused a request line and headers of more than 16 KiB
with 400; llhttp sets no such bound, so this protocol does (``MAX_HEAD``), with the same 400.

It also turns Nagle's algorithm off on every connection (``TCP_NODELAY``). asyncio does that by
itself only for sockets whose ``proto`` is ``IPPROTO_TCP``, and the daemon's listening socket is
made by ``socket.create_server`` (``proto`` 0), so its connections kept Nagle on: a response
written in two segments (headers, then body) waited for the client's delayed ACK, about 40 ms on
every request of a keep-alive connection after the first. And it hands the kernel an answer's
status line, headers and body in one write (uvicorn writes them apart: two system calls, two
segments for the client to read).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024   # bytes of request line and headers (h11's bound, which uvicorn kept)


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools re-raises it as an ``HttpParserError``, which
    uvicorn answers with 400 and a closed connection."""


class _OneWrite:
    """The connection's transport as one request's ``RequestResponseCycle`` sees it: while
    ``holding`` (the answer's start is being sent) writes are kept, and go out with the next."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._held: bytes | None = None
        self.holding = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        if self.holding:
            self._held = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _Cycle(RequestResponseCycle):
    """uvicorn's cycle, its answer's status line and headers written with the first body part."""

    async def send(self, message) -> None:
        start = message["type"] == "http.response.start"
        self.transport.holding = start
        try:
            await super().send(message)
        finally:
            self.transport.holding = False
            if not start:     # a body part (or a misuse): nothing stays held
                self.transport.flush()


class _HeaderTimeoutHttpTools(HttpToolsProtocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        _no_delay(transport)
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD:
            raise HeadTooLarge(f"request line and headers larger than {MAX_HEAD} bytes")

    def on_headers_complete(self) -> None:
        self._disarm()   # the headers are in (the body may follow)
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        # uvicorn builds the cycle itself; before it runs, it becomes one that writes once
        cycle.__class__ = _Cycle
        cycle.transport = _OneWrite(cycle.transport)
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # waiting for the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            log.info("closing a connection from %s: no complete request headers within %.0f s",
                     self.client[0] if self.client else "?", self.header_timeout)
            self.transport.close()


def _no_delay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:   # the peer already went: nothing to speed up
            pass


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose headers take longer than ``seconds``."""
    return type("HeaderTimeoutHttpTools", (_HeaderTimeoutHttpTools,), {"header_timeout": float(seconds)})
