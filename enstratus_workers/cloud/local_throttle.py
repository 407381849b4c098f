"""The local cloud's own request limit, for the tests: it answers as a throttling provider does.

Told to (``rate_limit`` in the account's cloud credential, requests per second, fractions
allowed; ``rate_burst``, the bucket's size, default one second's worth and at least 1), the
local cloud admits its API calls through a token bucket kept in its state directory, shared by
every driver and process that uses that directory, as a real provider's limit is shared by every
client of the account. A call beyond it raises libcloud's ``RateLimitReachedError`` (HTTP 429)
with a ``Retry-After`` header: the whole seconds until a token is back, at least 1.

Every call it judges is appended to ``requests.log`` in the state directory, one line each:
``<seconds since the epoch> <call> ok|throttled``: the provider's view of the request rate, which
the tests measure the service against.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from libcloud.common.exceptions import RateLimitReachedError

from enstratus_workers.cloud.local_state import locked

BUCKET_FILE = "throttle.json"
LOG_FILE = "requests.log"
LOCK_FILE = ".throttle-lock"


def positive(name: str, value) -> float:
    """A knob's value as a positive finite number; ``ValueError`` naming it otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a number above 0, not {value!r}"[:200])
    return number


class LocalThrottle:
    """A token bucket of ``rate`` per second holding at most ``burst``, in ``root``."""

    def __init__(self, root: Path, rate, burst=None):
        self.root = Path(root)
        self.rate = positive("rate_limit", rate)
        self.burst = max(1.0, self.rate) if burst is None else positive("rate_burst", burst)

    def admit(self, call: str) -> None:
        """Let ``call`` through, or raise ``RateLimitReachedError`` with a ``Retry-After``."""
        with locked(self.root, LOCK_FILE):
            now = time.time()
            try:
                bucket = json.loads((self.root / BUCKET_FILE).read_text("utf-8"))
            except (FileNotFoundError, ValueError):
                bucket = {"tokens": self.burst, "at": now}
            tokens = min(self.burst, bucket["tokens"] + (now - bucket["at"]) * self.rate)
            admitted = tokens >= 1
            if admitted:
                tokens -= 1
            (self.root / BUCKET_FILE).write_text(json.dumps({"tokens": tokens, "at": now}), "utf-8")
            with open(self.root / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(f"{now:.6f} {call} {'ok' if admitted else 'throttled'}\n")
        if not admitted:
            retry_after = max(1, math.ceil((1 - tokens) / self.rate))
            raise RateLimitReachedError(headers={"retry-after": str(retry_after)})


def read_log(root: Path) -> list[tuple[float, str, bool]]:
    """``requests.log`` of the local cloud at ``root``: (time, call, admitted) per call."""
    try:
        lines = (Path(root) / LOG_FILE).read_text("utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [(float(t), call, verdict == "ok") for t, call, verdict in (line.split() for line in lines)]
