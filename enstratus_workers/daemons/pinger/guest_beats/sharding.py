"""Which pinger beats which server when several run: rendezvous (highest-random-weight) hashing.

Every pinger computes, for each server, a weight per live pinger and takes the servers for which
its own weight is the highest. No coordination beyond agreeing on the live list (the pingers'
expiring heartbeats): when a pinger disappears from it, exactly its servers move, spread evenly
over the survivors, and nobody else's share changes. The weights are ``rendezvous.weight``'s.
"""

from __future__ import annotations

from typing import Iterable

from enstratus_workers.rendezvous import weight


def owner(server_id: str, pingers: Iterable[str]) -> str:
    """The live pinger that beats ``server_id``; ties (practically impossible) go to the lower name."""
    names = set(pingers)
    if not names:
        raise ValueError("no live pinger to own the server")
    return min(names, key=lambda p: (-weight(p, server_id), p))


def my_share(server_ids: Iterable[str], me: str, live_pingers: Iterable[str]) -> list[str]:
    """The servers ``me`` beats. ``me`` always counts as live: it is running this code."""
    live = set(live_pingers) | {me}
    return [sid for sid in server_ids if owner(sid, live) == me]
