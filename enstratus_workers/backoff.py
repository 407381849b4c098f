"""One backoff: capped exponential delays, with jitter where many clients retry together.

Every retry loop of the service (reconnecting to the broker, the KM or a database, respawning a
worker, re-checking deliveries) takes its delays from a :class:`Backoff`. Jitter matters when a
fleet's processes lose the same server at the same moment: without it they all come back in
the same millisecond, and keep doing so. The job retry delay is the exception that uses
``jitter=None``: it is broker-held, and each distinct delay is a delay queue of its own.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1 for the first): ``first * 2**(n-1)``, at most ``cap``.

    ``jitter``: ``"full"`` draws uniformly from [0, delay] (AWS's "full jitter": the least
    synchronised), ``"equal"`` from [delay/2, delay] (never much sooner than asked), ``None``
    none at all.
    """

    first: float
    cap: float
    jitter: str | None = "equal"

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        if n <= 0:
            return 0.0
        base = min(self.cap, self.first * 2 ** min(n - 1, 62))
        if self.jitter is None:
            return base
        r = (rng or random).random()
        return base * r if self.jitter == "full" else base * (0.5 + r / 2)


@dataclass
class Retrying:
    """A retry loop's state: count failures, say how long to wait, reset on success.

    ``stable_after``: for a loop that keeps a connection open, the seconds it must stay up to
    count as a success. ``succeeded`` (it opened) then only notes the time, and the next
    ``failed`` starts the count again only if the connection lasted that long: a server that
    lets a client in and drops it at once is retried with growing delays, not every half second.
    """

    backoff: Backoff
    failures: int = 0
    rng: random.Random | None = field(default=None, repr=False)
    stable_after: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _up_since: float | None = field(default=None, repr=False)

    def failed(self) -> float:
        """Count one more failure; return the seconds to wait before the next try."""
        if self._up_since is not None and self.clock() - self._up_since >= self.stable_after:
            self.failures = 0
        self._up_since = None
        self.failures += 1
        return self.backoff.delay(self.failures, self.rng)

    def succeeded(self) -> None:
        """It worked (with ``stable_after``: the connection opened; see the class docstring)."""
        if self.stable_after > 0:
            self._up_since = self.clock()
        else:
            self.failures = 0
