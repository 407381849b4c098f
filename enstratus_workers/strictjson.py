"""JSON that every component can store, send and read back: UTF-8 strings, finite numbers.

Python's ``json`` accepts ``NaN``/``Infinity`` (not JSON: other readers refuse them) and
turns ``"\\ud800"`` into a lone surrogate, a str that cannot be encoded as UTF-8 — stored, it
breaks every later reader of the row (a 500 for everyone listing jobs). Input from outside
(the admin API, ``submit()``, the CLI) goes through :func:`loads` or :func:`check`, and what
we write goes through :func:`dumps`, so neither can reach a database or a queue.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64   # deeper than any real argument document; bounds recursion on hostile input


class NotStrictJSON(ValueError):
    """The value (or text) is not strict JSON; the message says where and why."""


def check(value: Any, where: str = "$") -> None:
    """Raise :class:`NotStrictJSON` unless ``value`` is made of dicts with str keys, lists,
    UTF-8-encodable strings, finite numbers, bools and None, nested at most MAX_DEPTH deep."""
    stack = [(value, where, 0)]
    while stack:
        v, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise NotStrictJSON(f"{path[:60]}...: nested deeper than {MAX_DEPTH}")
        if isinstance(v, str):
            _check_str(v, path)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise NotStrictJSON(f"{path}: {v!r} is not a JSON number")
        elif v is None or isinstance(v, (bool, int)):
            continue
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise NotStrictJSON(f"{path}: key {k!r} is not a string")
                _check_str(k, f"{path} key")
                stack.append((item, f"{path}.{k}", depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        else:
            raise NotStrictJSON(f"{path}: {type(v).__name__} is not JSON")


def _check_str(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise NotStrictJSON(f"{path}: not valid UTF-8 (a lone surrogate?)") from None


def _refuse_constant(name: str):
    raise NotStrictJSON(f"{name} is not a JSON number")


def loads(text: str | bytes) -> Any:
    """Parse strict JSON; raise :class:`NotStrictJSON` (a ValueError) for anything else."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except NotStrictJSON:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NotStrictJSON(f"not JSON: {type(exc).__name__}") from None
    check(value)
    return value


def dumps(value: Any) -> str:
    """Serialize strict JSON compactly; raise :class:`NotStrictJSON` for anything else."""
    check(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
