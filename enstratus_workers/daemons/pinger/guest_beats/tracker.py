"""From guest beat results to a guest's health: "N missed beats -> unreachable, one good beat -> up".

One lost packet must not page anyone, so a server goes unreachable only after ``misses_to_down``
beats in a row fail; one good beat brings it back, because an answer is proof. The rule is a
pure function (``next_health``) so it is tested without sockets; ``HealthTracker`` applies it
to a round of results and reports only the changes, which the pinger turns into actions (e.g.
``server.sync`` for a server that went unreachable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

UNKNOWN = "unknown"        # never beaten yet (a new server, or a pinger that just started)
UP = "up"
UNREACHABLE = "unreachable"

DEFAULT_MISSES_TO_DOWN = 3


@dataclass(frozen=True)
class GuestHealth:
    """A guest server's health: its state, the misses in a row, when it last answered (ms, or None).

    Not the service's own health (``daemons.pinger.health.Health``)."""

    state: str = UNKNOWN
    misses: int = 0
    last_seen_ms: int | None = None


@dataclass(frozen=True)
class Transition:
    server_id: str
    old: str
    new: str
    at_ms: int
    error: str | None = None   # the last failure, for a transition to unreachable


def next_health(prev: GuestHealth, up: bool, now_ms: int, misses_to_down: int = DEFAULT_MISSES_TO_DOWN) -> GuestHealth:
    """The health after one beat."""
    if misses_to_down < 1:
        raise ValueError(f"misses_to_down must be >= 1, not {misses_to_down}")
    if up:
        return GuestHealth(UP, 0, now_ms)
    misses = prev.misses + 1
    state = UNREACHABLE if misses >= misses_to_down else prev.state
    return GuestHealth(state, misses, prev.last_seen_ms)


class HealthTracker:
    """Health of every server this pinger beats; ``observe`` returns what changed."""

    def __init__(self, misses_to_down: int = DEFAULT_MISSES_TO_DOWN):
        if misses_to_down < 1:
            raise ValueError(f"misses_to_down must be >= 1, not {misses_to_down}")
        self.misses_to_down = misses_to_down
        self._health: dict[str, GuestHealth] = {}

    def health(self, server_id: str) -> GuestHealth:
        return self._health.get(server_id, GuestHealth())

    def states(self) -> dict[str, str]:
        return {sid: h.state for sid, h in self._health.items()}

    def observe(self, results: Iterable, now_ms: int) -> list[Transition]:
        """Apply one round of ``BeatResult``-like results (``server_id``, ``up``, ``error``)."""
        changes = []
        for r in results:
            prev = self.health(r.server_id)
            new = next_health(prev, r.up, now_ms, self.misses_to_down)
            self._health[r.server_id] = new
            if new.state != prev.state:
                changes.append(Transition(r.server_id, prev.state, new.state, now_ms,
                                          None if r.up else getattr(r, "error", None)))
        return changes

    def retain(self, server_ids: Iterable[str]) -> None:
        """Forget every server not in ``server_ids`` (terminated, or now another pinger's share).

        A server that comes back to this pinger later starts from ``unknown`` again, so a stale
        miss count from long ago can never push it to unreachable early.
        """
        keep = set(server_ids)
        for sid in [s for s in self._health if s not in keep]:
            del self._health[sid]
