"""The agent's side of the protocol, as asyncio protocols, so one event loop serves many agents.

A real guest runs one agent; the benchmark runs thousands per process. Both use ``AgentHost``:
it owns the listening sockets and every open connection of one event loop, so closing it
closes every socket (tests run with ResourceWarnings as errors).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from enstratus_workers.guest import protocol as p

#: a connection with no request for this long is closed: bounds what idle clients can hold
IDLE_TIMEOUT = 30.0


class AgentIdentity:
    """Who an agent is: the server id it answers with, its boot time and its log file (or none)."""

    def __init__(self, server_id: str, log_path: Path | None = None):
        self.server_id = p.check_server_id(server_id)
        self.log_path = Path(log_path) if log_path is not None else None
        self.booted = time.monotonic()

    def uptime(self) -> float:
        return time.monotonic() - self.booted

    def write_log(self, message: str) -> None:
        """Append one line; O_APPEND, so a line is never interleaved with another writer's."""
        if self.log_path is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp}Z {self.server_id} {message}\n".encode("utf-8", "replace")
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_log(self, offset: int) -> tuple[int, bytes]:
        """``(start, data)``: whole lines from ``offset`` (from 0 if the log is now shorter)."""
        if self.log_path is None:
            return 0, b""
        try:
            with open(self.log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = offset if offset <= size else 0
                f.seek(start)
                data = f.read(p.MAX_LOG_CHUNK)
        except FileNotFoundError:
            return 0, b""
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[:cut + 1]
        elif len(data) < p.MAX_LOG_CHUNK:
            data = b""  # a line still being written: wait for its newline
        # else: one line longer than a chunk; hand it out in pieces so the reader progresses
        return start, data


def listen_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 128) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; port 0 lets the kernel pick a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # the same port again right after a reboot, despite connections in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class AgentConnection(asyncio.Protocol):
    """One client connection to one agent: requests are handled in order, one line at a time."""

    def __init__(self, agent: AgentIdentity, host: "AgentHost"):
        self.agent, self.host = agent, host
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._paused = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.host._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc):
        self.host._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def data_received(self, data: bytes):
        self._buffer += data
        self._arm_idle()
        self._process()

    def pause_writing(self):
        # a client that pipelines LOG requests without reading must not grow our buffer
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self):
        self._paused = False
        self.transport.resume_reading()
        self._process()

    def _process(self):
        while not self._paused and not self.transport.is_closing():
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                if len(self._buffer) > p.MAX_REQUEST:
                    self.transport.write(p.error_line("request line too long"))
                    self.transport.close()
                return
            self._buffer = rest
            self.transport.write(self._answer(line.strip()))

    def _answer(self, line: bytes) -> bytes:
        words = line.split()
        if words == [b"PING"]:
            return p.pong_line(self.agent.server_id, self.agent.uptime())
        if len(words) == 2 and words[0] == b"LOG" and words[1].isdigit():
            start, data = self.agent.read_log(int(words[1]))
            return p.log_header(start, start + len(data)) + data
        return p.error_line("unknown request")

    def _arm_idle(self):
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.host.idle_timeout, self._idle_out)

    def _idle_out(self):
        # close() waits for the answers still buffered to be read; a peer that stopped reading
        # would keep the connection for ever: it is cut instead
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


class AgentHost:
    """Every agent served by one event loop, and every connection open to them."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT):
        self.idle_timeout = idle_timeout
        self._servers: list[asyncio.Server] = []
        self._connections: set[AgentConnection] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def serve(self, agent: AgentIdentity, sock: socket.socket) -> asyncio.Server:
        """Serve ``agent`` on the listening ``sock`` (the host now owns the socket)."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: AgentConnection(agent, self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._servers.append(server)
        return server

    async def close(self) -> None:
        """Stop listening, then close every open connection and wait until all are gone."""
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        # closed transports call connection_lost on the next loop iterations
        for _ in range(100):
            if not self._connections:
                break
            await asyncio.sleep(0.01)


async def write_alive_lines(agent: AgentIdentity, interval: float, stop: asyncio.Event) -> None:
    """An "alive" line every ``interval`` seconds until ``stop``: a log that grows as a guest's does."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except asyncio.TimeoutError:
            agent.write_log(f"alive uptime={agent.uptime():.0f}s")
