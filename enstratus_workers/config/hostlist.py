"""A list of servers as ``host[:port]`` entries: a Galera cluster's in a database URL
(``config/dburl.py``), a RabbitMQ cluster's in ``mq.cfg``'s ``host``.

Each entry is a host name (RFC 1123: letters, digits and inner hyphens, dot-separated parts of
at most 63, 253 in all), a dotted IPv4 address or a bracketed IPv6 address (``[fd00::7]:5672``: a
bare one cannot be told from its port), with an optional port from 1 to 65535; an entry without
a port takes the list's default. No node may be listed twice (``db1`` and ``DB1:3306`` are the
same node when 3306 is the default). Messages name the entry by its place and text, never more:
the list may come out of a URL that holds a password.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Node:
    """One server of a list, as ``host:port`` (an IPv6 host in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_nodes(entries: Sequence[str], default_port: int) -> tuple[Node, ...]:
    """The nodes of a list, in its order; ``ValueError`` naming the first bad entry."""
    nodes: list[Node] = []
    for n, entry in enumerate(entries, 1):
        node = parse_node(entry, n, default_port)
        if node in nodes:
            raise ValueError(f"node {n} of the host list ({node}) is listed twice")
        nodes.append(node)
    return tuple(nodes)


def parse_node(entry: str, n: int, default_port: int) -> Node:
    """One ``host[:port]`` entry of a list (the ``n``-th, for the message)."""
    if not entry.strip():
        raise ValueError(f"node {n} of the host list is empty (write host1:{default_port},host2:{default_port},...)")
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise ValueError(f"node {n} of the host list ({_shown(entry)}) is not a bracketed IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"node {n} of the host list ({_shown(entry)}) has text after its address")
        port_text = rest[1:] if rest else None
    elif entry.count(":") > 1:
        raise ValueError(f"node {n} of the host list ({_shown(entry)}) is not a host name or address: "
                         f"an IPv6 address goes in brackets, as [{entry}]:{default_port}")
    else:
        host, colon, port_text = entry.partition(":")
        port_text = port_text if colon else None
        if not _is_host_name(host):
            raise ValueError(f"node {n} of the host list ({_shown(host)}) is not a host name or address")
    return Node(host.lower(), _port(port_text, n, default_port))


def _port(text: str | None, n: int, default_port: int) -> int:
    if text is None:
        return default_port
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"node {n} of the host list has a bad port {_shown(text)}: "
                         f"must be a number between 1 and 65535")
    return int(text)


def _is_host_name(host: str) -> bool:
    """An RFC 1123 host name or a dotted IPv4 address."""
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return all(_LABEL.fullmatch(label) for label in labels)


def _shown(text: str) -> str:
    """An entry as quoted in a message: cut short, on one line."""
    return ascii(text if len(text) <= 60 else text[:57] + "...")
