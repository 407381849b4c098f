"""How the pages write values: escaped, short, and times in UTC. Every renderer uses these, so
no value reaches a page unescaped (names, arguments, results and errors are user input)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape

from .strictbody import printable


def e(value) -> str:
    """Any value as escaped text; None as nothing."""
    return "" if value is None else escape(printable(str(value)))


def num(value) -> str:
    """A figure that may be missing (a queue that could not be asked)."""
    return "–" if value is None else e(value)


def when(ms: int | None, millis: bool = False) -> str:
    """An epoch-ms time in UTC, '–' when there is none."""
    if not ms:
        return "–"
    text = datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def cut(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def took(start_ms: int | None, end_ms: int | None) -> str:
    return f"{(end_ms - start_ms) / 1000:.3f} s" if start_ms and end_ms else "–"


def pretty(value) -> str:
    """A JSON value (arguments, a result) indented for a <pre>, escaped."""
    return e(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))
