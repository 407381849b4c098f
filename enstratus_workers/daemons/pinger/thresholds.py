"""Threshold ranges as the Monitoring Plugins development guidelines define them.

A range is ``[@]start:end``: ``start`` may be left out when it is 0 (``10`` means ``0:10``), an
empty ``end`` is infinity (``10:``), ``~`` as start is minus infinity (``~:10``), and ``start`` must
not exceed ``end``. A value *outside* the range (ends included) raises the alert; with a leading
``@`` a value *inside* it (ends included) does. So ``-w 100`` warns above 100, ``-w 10:`` below 10,
``-w @10:20`` from 10 to 20.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from enstratus_workers.errors import CHECK_CRITICAL, CHECK_OK, CHECK_WARNING

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"(?P<inside>@)?(?:(?P<start>~|{_NUMBER})?:)?(?P<end>{_NUMBER})?")


@dataclass(frozen=True)
class Range:
    text: str           # as the operator wrote it: the perfdata carries it back unchanged
    start: float
    end: float
    inside: bool        # "@": alert inside the range instead of outside

    @classmethod
    def parse(cls, text: str) -> Range:
        """The range ``text`` denotes; ``ValueError`` saying why if it is not one."""
        m = _RANGE.fullmatch(text)
        if m is None or (m["end"] is None and (m["start"] is None or ":" not in text)):
            raise ValueError(f"invalid range {text!r}: use N, N:, ~:N, N:M or @N:M (numbers)")
        start = -math.inf if m["start"] == "~" else float(m["start"] or 0)
        end = math.inf if m["end"] is None else float(m["end"])
        if start > end:
            raise ValueError(f"invalid range {text!r}: its start is above its end")
        return cls(text, start, end, bool(m["inside"]))

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def describe(self) -> str:
        """What raises the alert, in words, for the problem text (``above 100``, ``10 to 20``)."""
        lo, hi = _show(self.start), _show(self.end)
        if self.inside:
            if self.start == -math.inf:
                return f"at most {hi}"
            return f"at least {lo}" if self.end == math.inf else f"{lo} to {hi}"
        if self.start == -math.inf:
            return f"above {hi}"
        if self.end == math.inf:
            return f"below {lo}"
        return f"outside {lo} to {hi}"


@dataclass(frozen=True)
class Threshold:
    """A warning and a critical range for one measurement; either may be absent."""

    warning: Range | None = None
    critical: Range | None = None

    def __bool__(self) -> bool:
        return self.warning is not None or self.critical is not None

    def verdict(self, value: float) -> tuple[int, Range | None]:
        """``(CHECK_CRITICAL | CHECK_WARNING | CHECK_OK, the range that alerted)``; critical first."""
        for code, r in ((CHECK_CRITICAL, self.critical), (CHECK_WARNING, self.warning)):
            if r is not None and r.alerts(value):
                return code, r
        return CHECK_OK, None


def _show(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)
