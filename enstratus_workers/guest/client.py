"""Talking to a guest agent: a blocking client for actions, an async ping for the pinger.

Every call opens its own connection and closes it before returning, whatever happens: a
worker runs thousands of these and must not leak a socket per failure.
"""

from __future__ import annotations

import contextlib
import socket
import time

from enstratus_workers.guest import protocol as p


def _read_line(sock: socket.socket, buffer: bytearray, limit: int = p.MAX_REQUEST) -> bytes:
    while b"\n" not in buffer:
        if len(buffer) > limit:
            raise p.ProtocolError("answer line too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise p.ProtocolError("connection closed before the answer was complete")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def _read_exactly(sock: socket.socket, buffer: bytearray, n: int) -> bytes:
    while len(buffer) < n:
        chunk = sock.recv(max(65536, n - len(buffer)))
        if not chunk:
            raise p.ProtocolError(f"connection closed {n - len(buffer)} bytes short of a log block")
        buffer += chunk
    data = bytes(buffer[:n])
    del buffer[:n]
    return data


def ping(host: str, port: int, timeout: float = 5.0) -> p.Pong:
    """One PING; raises ``OSError`` (refused, timed out) or ``ProtocolError``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(p.ping_request())
        return p.parse_pong(_read_line(sock, bytearray()))


def fetch_log(host: str, port: int, offset: int, *, max_chunks: int = 16,
              timeout: float = 5.0) -> list[p.LogChunk]:
    """The log from ``offset`` on, in up to ``max_chunks`` chunks over one connection.

    Stops early at a chunk with no data. Only the first chunk can restart at 0 (a truncated
    log); the rest follow on. ``timeout`` bounds each socket operation, and the whole call to
    ``max_chunks`` times it.
    """
    chunks: list[p.LogChunk] = []
    deadline = time.monotonic() + timeout * max(1, max_chunks)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        buffer = bytearray()
        for _ in range(max_chunks):
            if time.monotonic() > deadline:
                break
            sock.sendall(p.log_request(offset))
            start, end, length = p.parse_log_header(_read_line(sock, buffer))
            data = _read_exactly(sock, buffer, length)
            if chunks and start != offset:
                raise p.ProtocolError(f"log restarted at {start} in the middle of a read at {offset}")
            if not data:
                if start != offset:  # truncated to nothing new yet: report the reset itself
                    chunks.append(p.LogChunk(start, end, data))
                break
            chunks.append(p.LogChunk(start, end, data))
            offset = end
    return chunks


async def async_ping(host: str, port: int) -> p.Pong:
    """One PING on the running loop; the caller bounds it in time (``asyncio.wait_for``).

    The writer is closed on every path, cancellation included.
    """
    # imported here: a worker process loads this module with its cloud actions and never pings;
    # asyncio is about 4 MiB of RSS there (the pinger, which calls this, has it loaded anyway)
    import asyncio

    reader, writer = await asyncio.open_connection(host, port, limit=p.MAX_REQUEST * 2)
    try:
        writer.write(p.ping_request())
        line = await reader.readline()
        return p.parse_pong(line.rstrip(b"\n") if line.endswith(b"\n") else b"")
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # a reset while closing: closed all the same
            await writer.wait_closed()
