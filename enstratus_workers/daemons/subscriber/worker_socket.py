"""Frames between the subscriber and its worker processes, over a local Unix socket.

JSON (not pickle: nothing that can reach the socket can make the other side run code), one
frame per ``multiprocessing.connection`` message:

    worker -> subscriber  {"t": "hello", "name", "type", "pid"}
    subscriber -> worker  {"t": "run", "a": [task, ...]}          jobs.values.Task.to_frame()
    worker -> subscriber  {"t": "done", "r": [outcome, ...]}       Outcome.to_frame(), in the order sent
    worker -> subscriber  {"t": "bye", "reason"}                   retiring; it starts nothing more
    subscriber -> worker  {"t": "stop"}                            finish what you hold, then exit

A worker runs its tasks strictly in order, so the subscriber knows which task a dead worker was
running (the oldest unanswered one) and that the rest were never started. A frame that is not
what it says (``unpack``, ``outcomes``) raises ``ValueError``: the subscriber drops that worker's
connection, charging the task it was running, and carries on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from enstratus_workers.jobs.values import Outcome

# sockaddr_un holds 108 bytes with the closing NUL: a longer path cannot be bound at all
# ("AF_UNIX path too long"), and an install root nested a few folders deep reaches it.
_SUN_PATH_MAX = 107


def pack(frame: dict) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode()


def unpack(data: bytes) -> dict:
    frame = json.loads(data)
    if not isinstance(frame, dict) or "t" not in frame:
        raise ValueError("not a frame")
    return frame


def outcomes(frame: dict) -> list[Outcome]:
    """The outcomes of a ``done`` frame."""
    if not isinstance(frame.get("r"), list):
        raise ValueError("a done frame without its outcomes")
    return [Outcome.from_frame(r) for r in frame["r"]]


def socket_path(layout, subscriber_name: str) -> Path:
    """Where the socket file lies when the path is short enough to bind (see ``address``)."""
    return layout.run_dir / f"subscriber@{subscriber_name}.sock"


def address(layout, subscriber_name: str) -> str:
    """The address the subscriber listens on and its workers connect to.

    The socket file in the run directory (mode 0600) when its path fits ``sockaddr_un``; on a
    deeper install root, on Linux, an abstract socket named after a digest of that path, so two
    installs never meet. An abstract socket has no file mode: the worker's authkey (its 0600
    key file, checked by ``multiprocessing``'s HMAC handshake) is what keeps others out, as it
    already is for the file.
    """
    path = socket_path(layout, subscriber_name)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX or not sys.platform.startswith("linux"):
        return str(path)
    digest = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:24]
    return f"\0enstratus-workers/{digest}/subscriber@{subscriber_name}"


def is_abstract(addr: str) -> bool:
    return addr.startswith("\0")


def authkey_path(layout, subscriber_name: str):
    return layout.run_dir / f"subscriber@{subscriber_name}.key"
