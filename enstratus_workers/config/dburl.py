"""The database URL syntax: one MySQL/MariaDB node, or the nodes of a Galera cluster.

A cluster's nodes go comma-separated in the URL's authority, as MySQL Connector/J (the driver
the Java heritage of enStratus knew) writes them::

    mysql+pymysql://enstratus:pw@db1:3306,db2:3306,db3/provisioning

A node without a port uses 3306. Everything else (user, password, database, query) is one
URL's and applies to every node. A URL naming one host is SQLAlchemy's, read by SQLAlchemy
exactly as before this syntax existed; only a list is checked entry by entry: each entry must be
a host name (RFC 1123), an IPv4 address or a bracketed IPv6 address, with an optional port from
1 to 65535, and none may be listed twice (``db1`` and ``db1:3306`` are the same node).

Messages never repeat the URL, only the offending node: the URL holds a password.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_PORT = 3306

# The URL up to the authority's host part, with SQLAlchemy's own rules for the user info (a
# password may hold "/" or ":"), so the single-host URL built from it reads as SQLAlchemy reads it.
_SPLIT = re.compile(r"""(?P<head>[\w+]+://(?:[^:/]*(?::[^@]*)?@)?)
                        (?P<hosts>[^/?]*)
                        (?P<tail>.*)""", re.X | re.S)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Node:
    """One server of the list, as ``host:port`` (an IPv6 host in brackets)."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class DbUrl:
    """A parsed URL: ``url`` is SQLAlchemy's, at the first node; ``nodes`` every node, in the
    operator's order (that order decides which node is written to: ``db/writer.py``)."""

    url: URL
    nodes: tuple[Node, ...] = ()

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1

    def at(self, node: Node) -> URL:
        """The same URL pointed at ``node``."""
        return self.url.set(host=node.host, port=node.port)

    def render(self, hide_password: bool = True) -> str:
        """The URL as text, every node in its authority, the password hidden unless asked."""
        text = self.url.render_as_string(hide_password=hide_password)
        if not self.clustered:
            return text
        parts = _SPLIT.fullmatch(text)
        return parts["head"] + ",".join(map(str, self.nodes)) + parts["tail"]


def parse(text: str) -> DbUrl:
    """Read a database URL; ``ValueError`` says what is wrong without quoting the URL."""
    word = text.strip()
    parts = _SPLIT.fullmatch(word)
    if parts is None or "," not in parts["hosts"]:
        url = _sqlalchemy(word)
        node = () if url.host is None else (Node(url.host, url.port or DEFAULT_PORT),)
        return DbUrl(url, node if url.get_backend_name() == "mysql" else ())
    nodes = _nodes(parts["hosts"])
    url = _sqlalchemy(parts["head"] + str(nodes[0]) + parts["tail"])
    if url.get_backend_name() != "mysql":
        raise ValueError(f"only a MySQL/MariaDB URL may name several nodes, not {url.get_backend_name()!r}")
    if "unix_socket" in url.query:
        raise ValueError("a URL naming several nodes cannot use unix_socket (one local server)")
    return DbUrl(url, nodes)


def _sqlalchemy(text: str) -> URL:
    try:
        return make_url(text)
    except (ArgumentError, ValueError, TypeError, UnicodeError):
        raise ValueError("is not a database URL: expected sqlite:///path/to/file.db or "
                         "mysql+pymysql://user:password@host:3306/database "
                         "(a cluster: host1:3306,host2:3306,host3)") from None


def _nodes(hosts: str) -> tuple[Node, ...]:
    nodes: list[Node] = []
    for n, entry in enumerate(hosts.split(","), 1):
        node = _node(entry, n)
        if node in nodes:
            raise ValueError(f"node {n} of the host list ({node}) is listed twice")
        nodes.append(node)
    return tuple(nodes)


def _node(entry: str, n: int) -> Node:
    """One ``host[:port]`` entry of the list (the ``n``-th, for the message)."""
    if not entry.strip():
        raise ValueError(f"node {n} of the host list is empty (write host1:3306,host2:3306,...)")
    if entry != entry.strip():
        raise ValueError(f"node {n} of the host list has blanks around it")
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"node {n} of the host list ({_shown(entry)}) is not a bracketed IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"node {n} of the host list ({_shown(entry)}) has text after its address")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = entry.partition(":")
        port_text = port_text if colon else None
        if not _is_host_name(host):
            raise ValueError(f"node {n} of the host list ({_shown(host)}) is not a host name or address")
    return Node(host.lower(), _port(port_text, n))


def _port(text: str | None, n: int) -> int:
    if text is None:
        return DEFAULT_PORT
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
    """A node as quoted in a message: a host name, cut short, on one line."""
    return ascii(text if len(text) <= 60 else text[:57] + "...")
