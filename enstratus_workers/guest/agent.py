"""A stand-in for the agent inside a guest VM: answers pings and serves its own log.

It listens on TCP (127.0.0.1 by default), speaks the line protocol of ``protocol.py``, and writes
a log as a booting machine does (boot lines, then an "alive" line every ``alive_interval``), so
heartbeats and log collection run against something real. Run it as a process::

    python -m enstratus_workers.guest.agent --port P --server-id ID --log FILE [--detach]

or in-process with ``GuestAgent(...).start()`` / ``.stop()``. Once listening, the process
prints one JSON line ``{"port": P, "pid": PID}``. ``--detach`` forks after binding: the printed
pid is the child, which runs in a session of its own and outlives whoever launched it, as a
server outlives the worker that launched it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from enstratus_workers.guest.server import (IDLE_TIMEOUT, AgentHost, AgentIdentity, listen_socket,
                                            write_alive_lines)

#: seconds between "alive" log lines of a real-looking guest
ALIVE_INTERVAL = 30.0


async def run_agent(agent: AgentIdentity, sock: socket.socket, stop: asyncio.Event, *,
                    alive_interval: float = ALIVE_INTERVAL, idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Serve ``agent`` on ``sock`` and write its log until ``stop`` is set; then close everything."""
    host = AgentHost(idle_timeout)
    address, port = sock.getsockname()[:2]
    agent.write_log(f"boot: agent {agent.server_id} starting, pid {os.getpid()}")
    await host.serve(agent, sock)
    try:
        agent.write_log(f"boot: listening on {address}:{port}")
        agent.write_log("boot: ready")
        await write_alive_lines(agent, alive_interval, stop)
    finally:
        agent.write_log("shutdown: agent stopping")
        await host.close()


class GuestAgent:
    """One agent served by an event loop in a thread of this process (tests, embedding).

    The socket is bound in ``start()``, so ``port`` is known (and connectable) when it returns.
    """

    def __init__(self, server_id: str, *, host: str = "127.0.0.1", port: int = 0,
                 log_path: Path | None = None, alive_interval: float = ALIVE_INTERVAL,
                 idle_timeout: float = IDLE_TIMEOUT):
        self.identity = AgentIdentity(server_id, log_path)
        self.host, self._port = host, port
        self.alive_interval, self.idle_timeout = alive_interval, idle_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self, timeout: float = 10.0) -> "GuestAgent":
        if self._thread is not None:
            raise RuntimeError("agent already started")
        sock = listen_socket(self.host, self._port)
        self._port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True,
                                        name=f"guest-agent-{self.identity.server_id}")
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("guest agent did not start in time")
        if self._failure is not None:
            raise RuntimeError("guest agent failed to start") from self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close every connection and join the thread. Safe to call twice."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already ended
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("guest agent thread did not stop in time")
        self._thread = None

    def __enter__(self) -> "GuestAgent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._main(sock))
        except BaseException as exc:  # reported to start() if it happens before ready
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self, sock: socket.socket) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._loop.call_soon(self._ready.set)
        await run_agent(self.identity, sock, self._stop, alive_interval=self.alive_interval,
                        idle_timeout=self.idle_timeout)


def _into_own_session() -> None:
    """In the forked child: a session of its own and no inherited stdio, so the launcher's
    pipes reach end-of-file and no terminal hang-up reaches the agent."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


async def _serve_until_signalled(agent: AgentIdentity, sock: socket.socket, alive_interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # handlers only set the flag
    await run_agent(agent, sock, stop, alive_interval=alive_interval)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m enstratus_workers.guest.agent",
                                 description="A guest agent: PING and LOG on a TCP port.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="0: any free port")
    ap.add_argument("--server-id", required=True)
    ap.add_argument("--log", type=Path, default=None, help="the agent's own log file")
    ap.add_argument("--alive-interval", type=float, default=ALIVE_INTERVAL)
    ap.add_argument("--detach", action="store_true", help="fork into a session of its own")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.alive_interval <= 0:
        print("--alive-interval must be > 0", file=sys.stderr)
        return 2
    try:
        agent = AgentIdentity(args.server_id, args.log)
        sock = listen_socket(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"guest agent: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    sys.stdout.flush()
    if args.detach:
        child = os.fork()
        if child > 0:
            sock.close()
            print(json.dumps({"port": port, "pid": child}), flush=True)
            os._exit(0)
        _into_own_session()
    else:
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    asyncio.run(_serve_until_signalled(agent, sock, args.alive_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
