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

import json

from enstratus_workers.jobs.values import Outcome


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


def socket_path(layout, subscriber_name: str):
    return layout.run_dir / f"subscriber@{subscriber_name}.sock"


def authkey_path(layout, subscriber_name: str):
    return layout.run_dir / f"subscriber@{subscriber_name}.key"
