"""Test-only actions, installed through the ``enstratus_workers.actions`` entry-point group.

They exist to prove what the service does when actions misbehave: kill their worker, hang,
fail transiently; and to count executions (``test.append``) in the chaos test.
"""

import os
import time


def append(arguments, context):
    """Append "<job_id> <attempt>" to ``arguments["path"]``: one line per execution."""
    line = f"{context.job_id} {context.attempt}\n".encode()
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
