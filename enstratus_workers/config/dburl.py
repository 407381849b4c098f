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

import re
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from enstratus_workers.config.hostlist import Node, parse_nodes

__all__ = ["DEFAULT_PORT", "DbUrl", "Node", "parse"]

DEFAULT_PORT = 3306

# The URL up to the authority's host part, with SQLAlchemy's own rules for the user info (a
# password may hold "/" or ":"), so the single-host URL built from it reads as SQLAlchemy reads it.
_SPLIT = re.compile(r"""(?P<head>[\w+]+://(?:[^:/]*(?::[^@]*)?@)?)
                        (?P<hosts>[^/?]*)
                        (?P<tail>.*)""", re.X | re.S)


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
    """The authority's ``host[:port]`` list (``config/hostlist.py``); a URL has no blanks in it."""
    entries = hosts.split(",")
    for n, entry in enumerate(entries, 1):
        if entry.strip() and entry != entry.strip():
            raise ValueError(f"node {n} of the host list has blanks around it")
    return parse_nodes(entries, DEFAULT_PORT)
