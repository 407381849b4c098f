"""The guest agent's wire protocol: one request line in, one answer out, on a plain TCP stream.

Requests are ASCII lines of at most ``MAX_REQUEST`` bytes ending in ``\\n``; several may follow
each other on one connection. Answers:

* ``PING``             -> ``PONG <server_id> <uptime_s>\\n`` (uptime in seconds, 3 decimals)
* ``LOG <offset>``     -> ``LOG <start> <end> <length>\\n`` followed by exactly ``<length>`` bytes:
  the agent's log from byte ``start`` to ``end`` (``end = start + length``), whole lines only,
  at most ``MAX_LOG_CHUNK`` bytes. ``start`` equals the requested offset unless the log is now
  shorter than that offset (it was truncated or replaced): then the agent starts over at 0, and
  the collector can tell. ``length`` 0 means nothing new.
* anything else        -> ``ERR <reason>\\n``; an over-long line is answered with ``ERR`` and the
  connection is closed, since the rest of it cannot be trusted to be a request.

A length-prefixed block, not a terminator, because log lines may hold any byte sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the port guest agents listen on in real guests (the pinger's default target port)
DEFAULT_AGENT_PORT = 2003
MAX_REQUEST = 256
MAX_LOG_CHUNK = 64 * 1024
#: a server id travels in the PONG line: printable, no whitespace
_SERVER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


class ProtocolError(Exception):
    """An answer that does not follow the protocol (wrong agent, garbage, truncated block)."""


@dataclass(frozen=True)
class Pong:
    server_id: str
    uptime_s: float


@dataclass(frozen=True)
class LogChunk:
    """``data`` is the log from byte ``start`` to ``end``; ``start`` < the asked offset means reset."""

    start: int
    end: int
    data: bytes


def check_server_id(server_id: str) -> str:
    if not isinstance(server_id, str) or not _SERVER_ID.fullmatch(server_id):
        raise ValueError(f"server id {server_id!r} must be 1-128 of A-Z a-z 0-9 . _ : @ -")
    return server_id


def ping_request() -> bytes:
    return b"PING\n"


def log_request(offset: int) -> bytes:
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"log offset must be an int >= 0, not {offset!r}")
    return b"LOG %d\n" % offset


def pong_line(server_id: str, uptime_s: float) -> bytes:
    return f"PONG {server_id} {uptime_s:.3f}\n".encode("ascii")


def log_header(start: int, end: int) -> bytes:
    return b"LOG %d %d %d\n" % (start, end, end - start)


def error_line(reason: str) -> bytes:
    return ("ERR " + " ".join(reason.split()) + "\n").encode("ascii", "replace")


def parse_pong(line: bytes) -> Pong:
    parts = line.decode("ascii", "replace").split()
    if len(parts) != 3 or parts[0] != "PONG":
        raise ProtocolError(f"expected PONG, got {_shown(line)}")
    try:
        uptime = float(parts[2])
    except ValueError:
        raise ProtocolError(f"bad uptime in {_shown(line)}") from None
    return Pong(parts[1], uptime)


def parse_log_header(line: bytes) -> tuple[int, int, int]:
    """``(start, end, length)`` of a LOG answer's header line."""
    parts = line.decode("ascii", "replace").split()
    if len(parts) != 4 or parts[0] != "LOG":
        raise ProtocolError(f"expected a LOG header, got {_shown(line)}")
    try:
        start, end, length = (int(p) for p in parts[1:])
    except ValueError:
        raise ProtocolError(f"bad numbers in {_shown(line)}") from None
    if start < 0 or length < 0 or end != start + length or length > MAX_LOG_CHUNK:
        raise ProtocolError(f"inconsistent LOG header {_shown(line)}")
    return start, end, length


def _shown(line: bytes) -> str:
    return repr(line[:80]) if line else "end of stream"
