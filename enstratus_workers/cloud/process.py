"""Processes the local cloud started, identified by pid *and* start time.

The agents run detached: the driver that launched them is not their parent, so it cannot wait
for them, and their pids may be reused once they die. The start time from /proc/<pid>/stat
(clock ticks since boot) makes (pid, start) name one process for the life of the machine. A
zombie counts as dead: when an agent's adoptive parent is slow to reap it, it is gone all the same.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_POLL = 0.02


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and ")"
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(pid: int | None, ticks: int | None) -> bool:
    """``pid`` runs and is the process that started at ``ticks``."""
    if not pid or pid <= 0:
        return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def terminate(pid: int | None, ticks: int | None, grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True once the process is gone.

    Never signals a process that merely reuses the pid.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not is_alive(pid, ticks):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_alive(pid, ticks):
                return True
            time.sleep(_POLL)
    return not is_alive(pid, ticks)
