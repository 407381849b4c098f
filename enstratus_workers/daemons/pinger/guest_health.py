"""What the pinger reads from and writes into a server object about its guest, as pure functions.

A server object (bucket ``server``, see ``cloud/servers.py``) gets three fields from the pinger:

* ``guest_health``: ``up`` (answered the last beat), ``down`` (missed fewer than
  ``pinger.guest_misses`` beats in a row) or ``unreachable`` (missed that many);
* ``guest_error``: why the last beat failed, written when the health changes;
* ``last_seen_ms``: when the agent last answered. Refreshed whenever the health changes, and
  otherwise only once it is ``misses * interval`` old, so thousands of healthy guests do not cost
  a write each per round: it is never older than the time it takes to declare a guest unreachable.

and its ``state`` moves ``running`` -> ``unreachable`` after the misses and back on the first good
beat. Other states (``stopped``, ``terminated`` ...) belong to the cloud actions: the pinger never
writes a server in one of them.
"""

from __future__ import annotations

import hashlib

from enstratus_workers.daemons.pinger.guest_beats import Target
from enstratus_workers.daemons.pinger.guest_beats import tracker as t
from enstratus_workers.guest.protocol import DEFAULT_AGENT_PORT

RUNNING = "running"              # libcloud's NodeState.RUNNING, as the cloud actions store it
UNREACHABLE = "unreachable"
WATCHED_STATES = (RUNNING, UNREACHABLE)

UP, DOWN = "up", "down"          # guest_health values, with UNREACHABLE


def target_of(server_id: str, data) -> Target | None:
    """Where the guest's agent listens, or None if the object holds no usable address.

    The agent answers with the cloud's node id, so ``provider_node_id`` is what it must say:
    an address reused by another guest then counts as down, not as this server up.
    """
    if not isinstance(data, dict):
        return None
    host, port = data.get("public_ip"), data.get("agent_port") or DEFAULT_AGENT_PORT
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int):
        return None
    if not 0 < port < 65536:
        return None
    node = data.get("provider_node_id")
    return Target(server_id, host, port, str(node) if node else None)


def health_of(health: t.GuestHealth, stored_state: str | None) -> str:
    """The ``guest_health`` to record after a beat.

    A pinger that has just taken a server over (after a restart, or from a dead pinger) starts
    counting misses from zero; a server already stored unreachable stays so while it keeps
    failing, rather than flapping back to ``down``.
    """
    if health.state == t.UNREACHABLE:
        return UNREACHABLE
    if health.misses == 0:
        return UP
    return UNREACHABLE if stored_state == UNREACHABLE else DOWN


def reconcile(current: dict | None, health: str, last_seen_ms: int | None, error: str | None,
              seen_slack_ms: int) -> dict | None:
    """The server object with a beat's outcome in it, or None when nothing needs writing.

    Pure, as ``servers.update_server`` wants: it may run again on a fresher copy of the object.
    """
    if not isinstance(current, dict) or current.get("state") not in WATCHED_STATES:
        return None  # gone, or stopped/terminated by a cloud action meanwhile: not ours to write
    new = dict(current)
    changed = current.get("guest_health") != health
    new["guest_health"] = health
    if changed:
        new["guest_error"] = None if health == UP else error
    stored_seen = current.get("last_seen_ms") or 0
    if last_seen_ms is not None and last_seen_ms > stored_seen and (
            changed or last_seen_ms - stored_seen >= seen_slack_ms):
        new["last_seen_ms"] = last_seen_ms
    if health == UNREACHABLE and current["state"] == RUNNING:
        new["state"] = UNREACHABLE
    elif health == UP and current["state"] == UNREACHABLE:
        new["state"] = RUNNING
    return None if new == current else new


def sync_key(server_id: str, data: dict | None) -> str:
    """The idempotency key of the ``server.sync`` for ``server_id`` going unreachable.

    Made from what is stored (the last time it was seen), not from anything one pinger alone
    knows: two pingers that both see the same outage, or one that restarts in the middle of it,
    submit the same key, hence one job; the next outage, after a good beat moved ``last_seen_ms``
    on, gets a new one.
    """
    seen = (data or {}).get("last_seen_ms") or 0
    key = f"guest:{server_id}:unreachable:{seen}"
    if len(key) > 200:  # the column's limit; server ids are short, but keys may be up to 512 bytes
        key = "guest:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key
