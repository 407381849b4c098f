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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping
from urllib.parse import parse_qsl, unquote

from enstratus_workers.config.hostlist import Node, parse_nodes

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DEFAULT_PORT", "DbUrl", "Node", "Parts", "check", "driver_tls", "parse"]

DEFAULT_PORT = 3306

# The URL up to the authority's host part, with SQLAlchemy's own rules for the user info (a
# password may hold "/" or ":"), so the single-host URL built from it reads as SQLAlchemy reads it.
_SPLIT = re.compile(r"""(?P<head>[\w+]+://(?:[^:/]*(?::[^@]*)?@)?)
                        (?P<hosts>[^/?]*)
                        (?P<tail>.*)""", re.X | re.S)


# SQLAlchemy's own pattern (``sqlalchemy.engine.url._parse_url``, 2.x), so that ``check`` reads a
# URL as ``make_url`` does; tests/unit/test_db_url_parts.py holds the two to the same answers.
_SQLALCHEMY_URL = re.compile(r"""(?P<name>[\w\+]+)://
                                 (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
                                 (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?
                                    (?::(?P<port>[^/\?]*))?)?
                                 (?:/(?P<database>[^\?]*))?
                                 (?:\?(?P<query>.*))?""", re.X)
_NOT_A_URL = ("is not a database URL: expected sqlite:///path/to/file.db or "
              "mysql+pymysql://user:password@host:3306/database (a cluster: host1:3306,host2:3306,host3)")


@dataclass(frozen=True)
class Parts:
    """A URL's fields as SQLAlchemy's ``make_url`` reads them, read without SQLAlchemy.

    Reading the settings checks every database URL, and every process reads them: a worker
    process that runs no database action would load SQLAlchemy (a third of its memory) for that
    check alone. What needs SQLAlchemy's ``URL`` (an engine, the URL shown) calls ``parse``.
    """

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    def get_backend_name(self) -> str:
        return self.drivername.split("+")[0]


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


def driver_tls(query: Mapping[str, object]) -> dict:
    """PyMySQL's TLS arguments for a MySQL URL whose query is ``query``: none when the query
    sets any ``ssl*`` key (TLS as the URL asks for it: ``?ssl_ca=/etc/mysql/ca.pem`` and the
    rest, which SQLAlchemy hands to PyMySQL, and which make TLS required), else
    ``ssl_disabled``: a plaintext connection, as PyMySQL made one before 1.2.

    Why: since 1.2, with no TLS option PyMySQL tries TLS whenever the server offers it, without
    checking the server's certificate, and builds a default SSL context for every connection
    to do so, loading the system's CA store, whatever the server offers: a connection cost
    58-62 ms of CPU here against 0.5-0.6 ms without (bench/README.md). Every connection a
    daemon makes paid it (each pool's first ones, each one after a database restart or a
    Galera writer's move, each node probe of the pinger's health round, every CLI command's),
    and a TLS the operator never asked for and that checks no certificate is no protection to
    rely on. TLS to the database is the URL's to ask for, with its CA, as TLS to the broker
    (``mq.cfg`` ``ssl``) and to the KM are the operator's.
    """
    return {} if any(str(key).startswith("ssl") for key in query) else {"ssl_disabled": True}


def parse(text: str) -> DbUrl:
    """Read a database URL; ``ValueError`` says what is wrong without quoting the URL."""
    first, _parts, nodes = _read(text)
    return DbUrl(_sqlalchemy(first), nodes)


def check(text: str) -> Parts:
    """The URL's fields at its first node, as ``parse`` reads them, without importing SQLAlchemy;
    ``ValueError`` as ``parse`` raises it."""
    return _read(text)[1]


def _read(text: str) -> tuple[str, Parts, tuple[Node, ...]]:
    """(the URL at its first node, its fields, its nodes)."""
    word = text.strip()
    parts = _SPLIT.fullmatch(word)
    if parts is None or "," not in parts["hosts"]:
        url = _fields(word)
        node = () if url.host is None else (Node(url.host, url.port or DEFAULT_PORT),)
        return word, url, node if url.get_backend_name() == "mysql" else ()
    nodes = _nodes(parts["hosts"])
    first = parts["head"] + str(nodes[0]) + parts["tail"]
    url = _fields(first)
    if url.get_backend_name() != "mysql":
        raise ValueError(f"only a MySQL/MariaDB URL may name several nodes, not {url.get_backend_name()!r}")
    if "unix_socket" in url.query:
        raise ValueError("a URL naming several nodes cannot use unix_socket (one local server)")
    return first, url, nodes


def _fields(text: str) -> Parts:
    """``make_url(text)``'s fields, its steps in its order (``_parse_url``, ``URL.create``)."""
    m = _SQLALCHEMY_URL.match(text)
    if m is None:
        raise ValueError(_NOT_A_URL)
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(m["query"] or ""):
        old = query.get(key)
        query[key] = value if old is None else (*((old,) if isinstance(old, str) else old), value)
    port = m["port"]
    try:
        # SQLAlchemy converts a non-empty port with int() and passes an empty one on, which
        # URL.create's int() refuses: the same ValueError either way
        port = None if port is None else int(port)
    except ValueError:
        raise ValueError(_NOT_A_URL) from None
    return Parts(m["name"], *(None if v is None else unquote(v) for v in (m["username"], m["password"])),
                 m["ipv4host"] or m["ipv6host"], port,
                 None if m["database"] is None else unquote(m["database"]), query)


def _sqlalchemy(text: str) -> URL:
    # imported here: see ``Parts``
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError, TypeError, UnicodeError):
        raise ValueError(_NOT_A_URL) from None


def _nodes(hosts: str) -> tuple[Node, ...]:
    """The authority's ``host[:port]`` list (``config/hostlist.py``); a URL has no blanks in it."""
    entries = hosts.split(",")
    for n, entry in enumerate(entries, 1):
        if entry.strip() and entry != entry.strip():
            raise ValueError(f"node {n} of the host list has blanks around it")
    return parse_nodes(entries, DEFAULT_PORT)
