"""The one wall clock of the service: milliseconds since the epoch, as the job rows store them.

Durations and deadlines inside one process use ``time.monotonic()`` instead (a wall-clock step
must not fire a time limit); what is written to a database or sent to another host uses this.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch (the unit of every ``*_timestamp`` column)."""
    return time.time_ns() // 1_000_000


def now_us() -> int:
    """Microseconds since the epoch: the cloud API limits' turns (``cloud/rate_policy.py``), where
    a key of a few hundred calls a second needs finer steps than a millisecond."""
    return time.time_ns() // 1_000
