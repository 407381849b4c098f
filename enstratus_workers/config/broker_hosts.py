"""``mq.cfg``'s ``host``: one RabbitMQ node or a cluster's, as ``host[:port]`` entries.

``host = rabbit1, rabbit2:5673, 10.0.0.7, [2001:db8::7]:5672`` names four nodes; an entry without
a port takes ``port`` (5672), so ``host = rabbit.example.com`` means what it always did. IPv6
addresses go in brackets (``[::1]`` or ``[::1]:5672``), since a bare one cannot be told from a
port. An entry must be a host name (RFC 1123 labels: letters, digits, inner hyphens, at most 63
characters each and 253 in all) or an IP address; an empty entry, a port outside 1..65535 and
a node listed twice are errors, each naming the entry. The messages never hold anything but the
entry itself: ``host`` is no secret.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")
MAX_NAME = 253


@dataclass(frozen=True)
class BrokerNode:
    """One broker node: where to connect. ``str()`` is how it is written in ``host`` and in logs."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _port(text: str, entry: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"entry {_shown(entry)} has a bad port {_shown(text)}: must be a number "
                         "from 1 to 65535")
    return int(text)


def _host(text: str, entry: str) -> str:
    """A host name or an IPv4 address (an IPv6 one comes bracketed, see ``parse_entry``)."""
    if ":" in text:
        raise ValueError(f"entry {_shown(entry)}: an IPv6 address goes in brackets, "
                         f"as [{text}] or [{text}]:5672")
    name = text[:-1] if text.endswith(".") else text     # a fully qualified name may end in "."
    labels = name.split(".")
    if all(_DIGITS.fullmatch(label) for label in labels):   # looks like an IPv4 address: must be one
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"entry {_shown(entry)} is not a valid IPv4 address") from None
    if len(name) > MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"entry {_shown(entry)} is not a host name or address (a host name is "
                         "letters, digits and inner hyphens, in dot-separated parts of at most 63)")
    return text


def parse_entry(entry: str, default_port: int) -> BrokerNode:
    """One ``host[:port]`` or ``[ipv6][:port]`` entry."""
    if entry.startswith("["):
        address, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise ValueError(f"entry {_shown(entry)} opens a bracket it does not close")
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise ValueError(f"entry {_shown(entry)}: {_shown(address)} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"entry {_shown(entry)}: expected ':port' after the bracket")
        return BrokerNode(host, _port(rest[1:], entry) if rest else default_port)
    if entry.count(":") != 1:          # no port, or a bare IPv6 address (which _host refuses)
        return BrokerNode(_host(entry, entry), default_port)
    host, _, port = entry.partition(":")
    if not host:
        raise ValueError(f"entry {_shown(entry)} has no host before the port")
    return BrokerNode(_host(host, entry), _port(port, entry))


def parse_hosts(value: str | list[str], default_port: int) -> tuple[BrokerNode, ...]:
    """The nodes of ``host``: a comma-separated text, or the list configobj made of it.

    Raises ``ValueError`` naming the first bad entry.
    """
    entries = [e.strip() for e in (value.split(",") if isinstance(value, str) else value)]
    if not any(entries):
        raise ValueError("must not be empty: name a broker node, as host or host:port")
    if not all(entries):
        raise ValueError("has an empty entry: write host[:port] entries separated by single commas")
    nodes: list[BrokerNode] = []
    for entry in entries:
        node = parse_entry(entry, default_port)
        if any(n.host.lower() == node.host.lower() and n.port == node.port for n in nodes):
            raise ValueError(f"lists node {node} twice")
        nodes.append(node)
    return tuple(nodes)
