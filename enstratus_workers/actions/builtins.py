"""Built-in actions: the ones every install has, for smoke tests, demos and benchmarks."""

from __future__ import annotations

import time

from ..errors import ActionError


def noop(arguments: dict, context) -> None:
    """Do nothing: measures the service's own overhead."""
    return None


def echo(arguments: dict, context) -> dict:
    """Return the arguments as the result."""
    return arguments


SLEEP_SLICE_S = 0.1   # how soon a cancelled sleep stops


def sleep(arguments: dict, context) -> dict:
    """Sleep ``seconds`` (a number >= 0): stands in for a long cloud call; a cancel ends it early."""
    seconds = arguments.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ActionError("'seconds' must be a number >= 0")
    cancelled = getattr(context, "cancelled", lambda: False)
    deadline = time.monotonic() + seconds
    while not cancelled() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, SLEEP_SLICE_S))
    return {"slept": seconds}


def fail(arguments: dict, context) -> None:
    """Raise with ``message``: shows how a failing action is recorded."""
    raise ActionError(str(arguments.get("message", "failed on purpose")))


def register_all(registry) -> None:
    for name, fn in (("noop", noop), ("echo", echo), ("sleep", sleep), ("fail", fail)):
        registry.register(name, fn)
