"""Test-only actions, installed through the ``enstratus_workers.actions`` entry-point group.

They exist to prove what the service does when actions misbehave: kill their worker, hang,
fail transiently; and to count executions (``test.append``) in the chaos test. The cancel tests
use ``test.loop`` (stops when cancelled), ``test.stubborn`` (ignores the cancel until killed)
and ``test.bad_undo`` (its compensation raises); the deferral test ``test.defer``.
"""

import json
import os
import time

from enstratus_workers.actions import action
from enstratus_workers.errors import Deferred

MAX_LOOP_S = 60.0   # a test action never outlives its test, cancelled or not


def _mark(path: str, what: str, context) -> None:
    """Append one JSON line saying what ran, for which attempt, in which process."""
    line = json.dumps({"what": what, "job": context.job_id, "attempt": context.attempt, "pid": os.getpid()})
    with open(path, "a") as f:
        f.write(line + "\n")


def undo(arguments, context):
    """The compensation of the cancel tests' actions: says it ran, and where."""
    _mark(arguments["path"], "undo", context)
    return {"undone": arguments["path"], "pid": os.getpid()}


def bad_undo(arguments, context):
    raise RuntimeError("cannot undo: the backup is gone")


@action(compensate=undo)
def loop(arguments, context):
    """Run until cancelled (at most MAX_LOOP_S), checking ``ctx.cancelled()`` in its loop."""
    _mark(arguments["path"], "start", context)
    deadline, turns = time.monotonic() + MAX_LOOP_S, 0
    while not context.cancelled() and time.monotonic() < deadline:
        turns += 1
        time.sleep(0.01)
    return {"turns": turns}


@action(compensate=undo)
def stubborn(arguments, context):
    """Ignore the cancel: sleep ``seconds`` (at most MAX_LOOP_S) whatever happens."""
    _mark(arguments["path"], "start", context)
    time.sleep(min(float(arguments.get("seconds", MAX_LOOP_S)), MAX_LOOP_S))
    return {"slept": True}


@action(compensate=bad_undo)
def loop_bad_undo(arguments, context):
    """``test.loop`` whose compensation raises."""
    return loop(arguments, context)


def defer(arguments, context):
    """Defer ``times`` times for ``delay`` s (counted in ``path``), then succeed."""
    with open(arguments["path"], "a+") as f:
        f.seek(0)
        runs = len(f.read().splitlines())
        f.write(f"{context.attempt} {time.time():.3f}\n")
    if runs < int(arguments.get("times", 3)):
        raise Deferred(float(arguments.get("delay", 1)), f"throttled ({runs + 1})")
    return {"deferred": runs}


def append(arguments, context):
    """Append "<job_id> <attempt>" to ``arguments["path"]``: one line per execution (with
    ``"pid": true``, "<job_id> <attempt> <pid>": which worker process ran it)."""
    pid = f" {os.getpid()}" if arguments.get("pid") else ""
    line = f"{context.job_id} {context.attempt}{pid}\n".encode()
    fd = os.open(arguments["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    if arguments.get("sleep"):
        time.sleep(float(arguments["sleep"]))
    return {"attempt": context.attempt}


def crash(arguments, context):
    """Kill the worker process running it, as a segfault or an OOM kill would."""
    os._exit(int(arguments.get("code", 70)))


def hang(arguments, context):
    """Never return (until the subscriber's time limit kills the worker)."""
    while True:
        time.sleep(1)


hang.time_limit = 1.0   # a per-action override of action.time_limit


def flaky(arguments, context):
    """Fail with an unexpected error until attempt ``succeed_on``."""
    if context.attempt < int(arguments.get("succeed_on", 2)):
        raise RuntimeError(f"transient failure on attempt {context.attempt}")
    return {"succeeded_on": context.attempt}
