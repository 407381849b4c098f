"""Telling a provider's "slow down" from its other errors, and how long it asked us to wait.

Providers say it in several ways, and libcloud passes most of them on unchanged:

- HTTP 429: libcloud's ``RateLimitReachedError`` (its ``retry_after`` from the ``Retry-After``
  header, 0 when there was none), or a ``BaseHTTPError``/``ProviderError`` with code 429;
- HTTP 503 with a ``Retry-After`` header (RFC 9110: "come back then");
- an error code in the answer's body, which drivers put into the exception's text: AWS's
  ``RequestLimitExceeded`` / ``Throttling``, Azure's and OpenStack's ``TooManyRequests``,
  Google's ``rateLimitExceeded``.

Anything else is not a throttle, and is left to the action (a retry, or a failure).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ..clock import now_ms
from ..errors import MAX_DEFER_S

#: words in an error's text that mean "too many requests", whatever its HTTP code
THROTTLE_WORDS = re.compile(r"RequestLimitExceeded|Throttl(?:ing|ed)|TooManyRequests|Too Many Requests|"
                            r"(?:user)?[Rr]ateLimitExceeded|Rate exceeded|SlowDown")


@dataclass(frozen=True)
class Throttle:
    """A throttling answer: the provider's ``Retry-After`` in seconds (0: it named none), and
    what it said, for the job's error while it waits."""

    retry_after_s: float
    reason: str


def _code(exc: BaseException) -> int | None:
    for attr in ("code", "http_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def retry_after(value) -> float:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP date); 0 if unusable.
    At most ``errors.MAX_DEFER_S``: a job cannot be held longer."""
    if value is None:
        return 0.0
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now_ms() / 1000
        except (TypeError, ValueError, IndexError):
            return 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0
    return min(seconds, float(MAX_DEFER_S))


def _header(exc: BaseException, name: str):
    headers = getattr(exc, "headers", None) or {}
    for key, value in getattr(headers, "items", lambda: ())():
        if str(key).lower() == name:
            return value
    return None


def throttle_of(exc: BaseException) -> Throttle | None:
    """The throttle ``exc`` says, or None if it is some other error."""
    reason = f"{type(exc).__name__}: {exc}"[:500]
    given = getattr(exc, "retry_after", None)
    wait = retry_after(given if given else _header(exc, "retry-after"))
    code = _code(exc)
    if code == 429 or (code == 503 and wait > 0):
        return Throttle(wait, reason)
    if THROTTLE_WORDS.search(str(exc)):
        return Throttle(wait, reason)
    return None
