"""A test helper: make the OS "refuse" one thread, as ``threading.Thread.start`` does when no
more threads can be had (``RuntimeError: can't start new thread``)."""

from __future__ import annotations

import threading


def refuse_one_thread(monkeypatch, name: str) -> list:
    """Make the next start of a thread called ``name`` raise RuntimeError; the list returned
    holds the refused thread once it happened. Other threads start as usual."""
    real_start, refused = threading.Thread.start, []

    def start(thread):
        if thread.name == name and not refused:
            refused.append(thread)
            raise RuntimeError("can't start new thread")
        return real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    return refused
