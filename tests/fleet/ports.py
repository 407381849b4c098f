"""Loopback ports for the clusters the fleet tests start, chosen below the kernel's ephemeral range.

A node stopped in a test is started again on the same ports. A port in the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 here) can meanwhile become the local end
of some client's outgoing connection (a daemon reconnecting, a database client), and the node's
listener then cannot bind it: RabbitMQ's node dies in its boot, a Galera node does not start.
Below that range only a listener takes a port, and ``free_ports`` checks that none does now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000   # clear of the well-known ports and of those this machine's services use


def ephemeral_start() -> int:
    """The first port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768   # Linux's default


def free_ports(n: int, lo: int = LOWEST, hi: int | None = None, taken: set[int] | None = None) -> list[int]:
    """``n`` distinct loopback ports in [lo, hi) (``hi``: the ephemeral range's start) that nobody
    listens on now and that are not in ``taken`` (which gets them added)."""
    hi = ephemeral_start() if hi is None else hi
    taken = set() if taken is None else taken
    out: list[int] = []
    for _ in range(200 * n):
        if len(out) == n:
            return out
        port = random.randrange(lo, hi)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        out.append(port)
    if len(out) == n:
        return out
    raise RuntimeError(f"no {n} free ports in {lo}..{hi}")
