"""Small pure converters from config text to typed values, shared by ``.properties`` and ``.cfg`` files.

Both file formats go through these so that ``yes``, ``1e3`` or ``10.0.0.1/24`` mean the same thing
wherever an operator writes them. Each raises ``ValueError`` with a message fit for the operator and
knows nothing of files or lines: the readers add the file, key and line. A converter that may be
handed a secret (URLs, keys) never puts the value into its message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re

from enstratus_workers.config import dburl, limits

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# ASCII digits only: int() would also take "1_000" and non-ASCII digits, which no operator means.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NAME = limits.TYPE_NAME
QUEUE = limits.QUEUE_NAME
DB_SCHEMES = ("sqlite", "mysql+pymysql")
_URL_SECRET_PARAMS = frozenset({"password", "passwd"})


def _shown(text: str) -> str:
    """A value quoted for an error message, cut short so a pasted blob does not flood the log."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{_shown(text.strip())} is not a boolean (use true/false, yes/no, on/off or 1/0)")


def _range_text(lo, hi, lo_open=False) -> str:
    if lo is not None and hi is not None:
        return f"greater than {lo} and at most {hi}" if lo_open else f"between {lo} and {hi}"
    if lo is not None:
        return f"greater than {lo}" if lo_open else f"at least {lo}"
    return f"at most {hi}"


def integer(text: str, lo: int | None = None, hi: int | None = None) -> int:
    word = text.strip()
    if not _INT.fullmatch(word):
        raise ValueError(f"{_shown(word)} is not an integer")
    value = int(word)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{value} is out of range: must be {_range_text(lo, hi)}")
    return value


def number(text: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite float; ``lo_open`` makes the lower bound exclusive (a timeout must be > 0)."""
    word = text.strip()
    if not _FLOAT.fullmatch(word):
        raise ValueError(f"{_shown(word)} is not a number")
    value = float(word)
    if not math.isfinite(value):
        raise ValueError(f"{_shown(word)} is too large")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        raise ValueError(f"{word} is out of range: must be {_range_text(lo, hi, lo_open)}")
    return value


def choice(text: str, options) -> str:
    word = text.strip()
    if word not in options:
        raise ValueError(f"{_shown(word)} is not one of: {', '.join(options)}")
    return word


def comma_list(text: str) -> tuple[str, ...]:
    """Items of ``a, b,c``: blanks around items and empty items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def names(text: str, what: str, pattern: re.Pattern = NAME,
          allowed: str = limits.TYPE_RULE) -> tuple[str, ...]:
    """A comma list of identifiers (worker types, queues), non-empty and without repeats."""
    items = comma_list(text)
    if not items:
        raise ValueError(f"needs at least one {what}")
    seen = set()
    for item in items:
        if not pattern.fullmatch(item):
            raise ValueError(f"{_shown(item)} is not a valid {what} name ({allowed})")
        if item in seen:
            raise ValueError(f"{what} {item!r} is listed twice")
        seen.add(item)
    return items


def queue_names(text: str) -> tuple[str, ...]:
    return names(text, "queue", QUEUE, limits.QUEUE_RULE)


def host_name(text: str) -> str:
    """``host.name``: a name that can be part of a file, queue and worker name."""
    word = text.strip()
    if not limits.valid_host_name(word):
        raise ValueError(f"{_shown(word)} cannot name a host: use {limits.HOST_NAME_RULE} "
                         "(it becomes part of pid, log and worker names)")
    return word


def host_tags(text: str) -> tuple[str, ...]:
    """``host.tags``: comma-separated tags (may be empty), without repeats."""
    items = comma_list(text)
    if len(items) > limits.MAX_TAGS:
        raise ValueError(f"names {len(items)} tags: at most {limits.MAX_TAGS}")
    return names(text, "tag", limits.TAG_NAME, limits.TAG_RULE) if items else ()


def non_empty(text: str) -> str:
    word = text.strip()
    if not word:
        raise ValueError("must not be empty")
    return word


def parse_db_url(text: str) -> dburl.Parts:
    """The URL's fields as SQLAlchemy will read them (at its first node, if it names several:
    see ``dburl``), without loading SQLAlchemy; messages never repeat the URL (it may hold a
    password)."""
    return dburl.check(text)


def db_url(text: str) -> str:
    """A provisioning/analytics/persistence URL, kept as written (relative SQLite paths included)."""
    url = parse_db_url(text)
    if url.drivername not in DB_SCHEMES:
        mysql = url.drivername.startswith("mysql")
        hint = " (use mysql+pymysql://, the driver this service ships with)" if mysql else ""
        raise ValueError(f"unsupported database URL scheme {url.drivername!r}: must be "
                         f"{' or '.join(s + '://' for s in DB_SCHEMES)}{hint}")
    if url.drivername.startswith("mysql"):
        if not url.database:
            raise ValueError("MySQL URL names no database: expected mysql+pymysql://user:password@host:3306/database")
        if url.port is not None and not 1 <= url.port <= 65535:
            raise ValueError(f"port {url.port} in the database URL is out of range: must be between 1 and 65535")
    return text.strip()


def optional_db_url(text: str) -> str:
    return db_url(text) if text.strip() else ""


def url_has_password(text: str) -> bool:
    """True if a DB URL carries a password, in its user part or as a connect parameter."""
    if not text.strip():
        return False
    try:
        url = dburl.check(text)
    except ValueError:
        # unparseable: treat anything with user info as secret, to err on the safe side
        return "@" in text
    return bool(url.password) or any(k.lower() in _URL_SECRET_PARAMS for k in url.query)


def redact_url(text: str) -> str:
    """The URL with its password (and password-like connect parameters) shown as ``***``;
    every node of a cluster's URL."""
    try:
        parsed = dburl.parse(text)
    except ValueError:
        return "***"
    url = parsed.url
    query = {k: ("***" if k.lower() in _URL_SECRET_PARAMS else v) for k, v in url.query.items()}
    # render_as_string quotes the mask in the query; show it as in the user part
    shown = dburl.DbUrl(url.set(query=query), parsed.nodes).render(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")


def encryption_key(text: str) -> bytes:
    """The AES-256 key: base64 of exactly 32 bytes. Messages never contain the key."""
    word = text.strip()
    if not word:
        raise ValueError("is empty: run `enstratus-workers keygen` to generate a key")
    try:
        raw = base64.b64decode(word, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (generate one with `enstratus-workers keygen`)") from None
    if len(raw) != 32:
        raise ValueError(f"must be base64 of exactly 32 bytes for AES-256, got {len(raw)} bytes "
                         "(generate one with `enstratus-workers keygen`)")
    return raw


def cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One network; host bits set is an error, since ``10.0.0.7/24`` is usually a typo for a /32."""
    word = text.strip()
    try:
        return ipaddress.ip_network(word, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise ValueError(f"{_shown(word)} is not a CIDR network (e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
    host = word.split("/", 1)[0]
    raise ValueError(f"{_shown(word)} has host bits set: did you mean {loose} (the whole network) "
                     f"or {host}/{loose.max_prefixlen} (that one address)?")


def cidr_list(value) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (configobj may already have split them into a list); may be empty."""
    items = comma_list(value) if isinstance(value, str) else tuple(v.strip() for v in value if v.strip())
    return tuple(cidr(item) for item in items)
