"""A deadline for a request's headers, which uvicorn's h11 protocol does not have.

uvicorn closes a keep-alive connection that stays silent, but a client that sends a byte now and
then (half a request line, one header every few seconds: "slowloris") keeps its connection, and
so a slot of the daemon, forever. ``header_timeout_protocol(seconds)`` is uvicorn's
``H11Protocol`` with one timer more: armed when a connection opens and again when it goes idle
between two keep-alive requests, cancelled once a request's headers are complete; if it fires
first, the connection is closed. A slow *body* is not covered: bodies are capped (``max_body``).

It also turns Nagle's algorithm off on every connection (``TCP_NODELAY``). asyncio does that by
itself only for sockets whose ``proto`` is ``IPPROTO_TCP``, and the daemon's listening socket is
made by ``socket.create_server`` (``proto`` 0), so its connections kept Nagle on: a response
written in two segments (headers, then body) waited for the client's delayed ACK, about 40 ms on
every request of a keep-alive connection after the first.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class _HeaderTimeoutH11(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        _no_delay(transport)
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (the body may follow)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
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
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
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


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers take longer than ``seconds``."""
    return type("HeaderTimeoutH11", (_HeaderTimeoutH11,), {"header_timeout": float(seconds)})
