"""The benchmarks' own action, found by the service through an entry point of this directory.

``bench.stamp`` returns the wall-clock time at which it started, with microseconds: the job row
keeps whole milliseconds only, and a latency of a few ms needs a finer clock. The bench and the
worker read the same clock (one machine), so ``started - submit_call_started`` is exact to the
clock's resolution. ``harness`` puts this directory on the service's ``PYTHONPATH``; nothing is
installed anywhere.
"""

import time


def stamp(arguments, context):
    return {"started": time.time()}
