"""Slowing down whoever guesses tokens: failures are counted per client address.

The first ``FREE_FAILURES`` wrong tokens from an address cost nothing (a typo, a stale script);
each one after that locks the address out for twice as long as the one before (1 s, 2 s, 4 s ...
up to ``MAX_LOCK_S``). While locked out, every token it presents, right or wrong, is answered 429
with ``Retry-After``, so a guesser cannot keep trying at full speed. A right token resets the
count; an address that stops failing is forgotten after ``FORGET_S``. Other addresses are never
affected. The table is bounded (``MAX_ADDRESSES``), so a spray from many addresses cannot grow
it without end.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

FREE_FAILURES = 5
MAX_LOCK_S = 15 * 60
FORGET_S = 30 * 60
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class Throttle:
    """Per-address count of failed tokens; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Whole seconds until ``address`` may present a token again; 0 if it may now."""
        now = self._clock()
        with self._lock:
            r = self._records.get(address)
            if r is None or r.locked_until <= now:
                return 0
            return max(1, math.ceil(r.locked_until - now))

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            r = self._records.get(address)
            if r is None or now - r.last_failure >= FORGET_S:
                if len(self._records) >= MAX_ADDRESSES:
                    self._forget(now)
                r = self._records[address] = _Record()
            r.failures += 1
            r.last_failure = now
            over = r.failures - FREE_FAILURES
            if over >= 0:
                r.locked_until = now + min(MAX_LOCK_S, 2 ** min(over, 20))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._records.pop(address, None)

    def _forget(self, now: float) -> None:
        stale = [a for a, r in self._records.items() if now - r.last_failure >= FORGET_S]
        for a in stale or sorted(self._records, key=lambda a: self._records[a].last_failure)[:MAX_ADDRESSES // 10]:
            del self._records[a]
