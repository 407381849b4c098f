"""How many worker processes each worker type should run: the pool's autoscaling policy.

Pure decisions over a snapshot, so they can be tested without processes: keep every type
between its ``min`` and ``max``; add a process when work is waiting and every process of the
type is busy; retire one that has been idle for ``IDLE_RETIRE_S`` while above ``min``; retire
everything of a type that is no longer wanted (disabled or deleted through the admin API).
A process disabled for dying too often keeps its slot until a reload: nothing is started in its
place, so a fault that kills every process of a type (a broken import, say) costs at most
``max`` processes' restart caps, not a new process every few seconds for ever.
At most one step up or down per type per call: the pool calls this about once a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDLE_RETIRE_S = 30.0


@dataclass(frozen=True)
class TypeView:
    """What the pool has of one worker type right now."""

    active: int = 0                  # processes alive or starting, not retiring or disabled
    busy: int = 0                    # of those, with actions in hand
    pending: int = 0                 # assignments waiting for a free process of this type
    members: tuple = field(default=())  # (handle name, seconds idle, or None when busy)
    disabled: int = 0                # slots held by processes that died too often (until a reload)

    @property
    def idle(self) -> list[tuple[str, float]]:
        return [(h, s) for h, s in self.members if s is not None]


def plan(desired: dict, views: dict[str, TypeView], idle_retire_s: float = IDLE_RETIRE_S) -> list[tuple[str, str]]:
    """``[("spawn", type_name) | ("retire", handle_name), ...]`` to move the pool toward ``desired``.

    ``desired`` maps a type name to an object with ``min`` and ``max`` (a WorkerType).
    """
    steps: list[tuple[str, str]] = []
    for name, wtype in desired.items():
        v = views.get(name, TypeView())
        held = v.active + v.disabled     # a disabled process's slot is not filled by another
        if held < wtype.min:
            steps += [("spawn", name)] * (wtype.min - held)
        elif v.active > wtype.max:
            steps += [("retire", h) for h in _idlest(v, v.active - wtype.max)]
        elif v.pending and v.busy >= v.active and held < wtype.max:
            steps.append(("spawn", name))
        elif not v.pending and v.active > wtype.min:
            long_idle = [h for h, seconds in v.idle if seconds >= idle_retire_s]
            if long_idle:
                steps.append(("retire", long_idle[0]))
    for name, v in views.items():
        if name not in desired:
            steps += [("retire", h) for h in _idlest(v, v.active)]
    return steps


def _idlest(v: TypeView, n: int) -> list[str]:
    """The ``n`` processes to retire first: the longest idle, then busy ones (which finish first)."""
    order = sorted(v.members, key=lambda m: (m[1] is None, -(m[1] or 0.0)))
    return [h for h, _ in order][:n]
