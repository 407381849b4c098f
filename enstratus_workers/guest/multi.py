"""Many guest agents in one process, for benchmarks: one event loop, one listening socket each.

    python -m enstratus_workers.guest.multi --count 1250 --id-prefix bench-0- [--lifetime 300]

Ports are picked by the kernel (port 0, i.e. from the ephemeral range), so nothing has to guess
which ports are free. Once every socket listens the process prints one JSON line
``{"pid": PID, "agents": [[server_id, port], ...]}``. It stops, closing every socket, on
SIGTERM/SIGINT, when its stdin reaches end-of-file (its launcher went away) or after
``--lifetime`` seconds, whichever comes first: a benchmark that crashes leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys

from enstratus_workers.guest.server import AgentHost, AgentIdentity, listen_socket


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve_many(count: int, id_prefix: str, host: str, lifetime: float, watch_stdin: bool) -> None:
    agents_host = AgentHost()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    served = []
    try:
        for i in range(count):
            agent = AgentIdentity(f"{id_prefix}{i}")
            sock = listen_socket(host, 0)
            port = sock.getsockname()[1]
            await agents_host.serve(agent, sock)
            served.append([agent.server_id, port])
        print(json.dumps({"pid": os.getpid(), "agents": served}), flush=True)
        if watch_stdin:
            try:
                loop.add_reader(sys.stdin.fileno(), _on_stdin, stop)
            except (OSError, ValueError):  # stdin is a regular file or closed: nothing to watch
                watch_stdin = False
        try:
            await asyncio.wait_for(stop.wait(), lifetime)
        except asyncio.TimeoutError:
            pass
    finally:
        if watch_stdin:
            loop.remove_reader(sys.stdin.fileno())
        await agents_host.close()


def _on_stdin(stop: asyncio.Event) -> None:
    if not os.read(sys.stdin.fileno(), 4096):
        stop.set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m enstratus_workers.guest.multi")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--id-prefix", default="agent-")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--lifetime", type=float, default=300.0, help="seconds before it stops by itself")
    ap.add_argument("--no-stdin-watch", action="store_true", help="do not stop at stdin EOF")
    args = ap.parse_args(argv)
    if not 1 <= args.count <= 20000 or args.lifetime <= 0:
        print("--count must be 1..20000 and --lifetime > 0", file=sys.stderr)
        return 2
    # one listening socket per agent plus an accepted one per concurrent client, plus slack
    limit = raise_open_files_limit(2 * args.count + 64)
    if limit < args.count + 64:
        print(f"open-files limit {limit} is too low for {args.count} agents", file=sys.stderr)
        return 1
    asyncio.run(serve_many(args.count, args.id_prefix, args.host, args.lifetime,
                           not args.no_stdin_watch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
