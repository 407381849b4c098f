"""What ``pinger check`` reports about the guests: guests that are down, and rounds that lag.

Down are the servers in state ``unreachable`` (the cloud says running, the agent is silent) and
the ``stopped`` ones the pinger saw go unreachable before a sync found them stopped: the platform
launched them running and no action of the platform stops a server, so they died.

A pinger puts the summary of its last guest round (``GuestWatch.beat_round``) into its heartbeat
row under ``details["guests"]``. A round that starts late, or a summary that stops being
renewed (rounds failing, the loop stuck), means outages are noticed late: WARNING once rounds
are an interval behind, CRITICAL once they are ``guest_misses`` intervals behind, i.e. once
detection takes twice as long as it should.
"""

from __future__ import annotations

import sqlalchemy as sa

from enstratus_workers.clock import now_ms
from enstratus_workers.cloud.servers import SERVER_BUCKET
from enstratus_workers.daemons.pinger import guest_health as gh
from enstratus_workers.errors import CHECK_CRITICAL, CHECK_WARNING, EnstratusError
from enstratus_workers.persist import NotFound, open_store

#: the key of a pinger heartbeat's details that holds its last guest-round summary
SUMMARY_KEY = "guests"
STOPPED = "stopped"   # libcloud's NodeState.STOPPED, as the cloud actions store it
LISTED = 5            # servers named in the status line; the rest are counted


def check(settings, layout, dbs, persistence=None) -> list[tuple[int, str]]:
    """Monitoring problems about guests, as ``(CHECK_* code, text)``; empty when all is well."""
    problems = _lagging(settings.pinger, dbs)
    try:
        store = open_store(settings.persistence, layout) if persistence is None else persistence
    except EnstratusError as exc:
        return problems + [(CHECK_CRITICAL, f"guests: cannot open the persistence layer: {exc}")]
    try:
        problems += _down(store)
    except EnstratusError as exc:
        problems.append((CHECK_CRITICAL, f"guests: cannot read server objects: {exc}"))
    finally:
        if persistence is None:
            store.close()
    return problems


def summary_of(details) -> dict | None:
    """The guest-round summary in a pinger heartbeat's details, if there is one."""
    if not isinstance(details, dict):
        return None
    summary = details.get(SUMMARY_KEY)
    return summary if isinstance(summary, dict) and isinstance(summary.get("at_ms"), int) else None


def _lagging(p, dbs) -> list[tuple[int, str]]:
    try:
        beats = [b for b in dbs.heartbeats.all() if b.daemon == "pinger" and not b.expired]
    except sa.exc.SQLAlchemyError as exc:
        return [(CHECK_CRITICAL, f"guests: cannot read the pingers' heartbeats: {type(exc).__name__}")]
    problems = []
    now = now_ms()
    for beat in beats:
        summary = summary_of(beat.details)
        if summary is None:
            continue
        interval_ms = float(summary.get("interval_s") or p.guest_interval) * 1000
        # the row is renewed every heartbeat_interval with the latest summary: that much is fine
        allowed = interval_ms + p.heartbeat_interval * 1000 + summary.get("round_ms", 0)
        overdue = now - summary["at_ms"] - allowed
        behind = max(summary.get("lag_ms", 0), overdue)
        what = (f"pinger {beat.name}@{beat.host}: guest heartbeats {behind / 1000:.0f}s behind "
                f"their {interval_ms / 1000:g}s interval")
        if behind > p.guest_misses * interval_ms:
            problems.append((CHECK_CRITICAL, what + ": outages go unnoticed"))
        elif behind > interval_ms:
            problems.append((CHECK_WARNING, what))
    return problems


def _down(store) -> list[tuple[int, str]]:
    unreachable = store.query(SERVER_BUCKET, "state_bin", gh.UNREACHABLE)
    down = [(sid, None) for sid in unreachable]
    for sid in store.query(SERVER_BUCKET, "state_bin", STOPPED):
        data = _read(store, sid)
        if data is not None and data.get("guest_health") == gh.UNREACHABLE:
            down.append((sid, data))
    if not down:
        return []
    now = now_ms()
    named = []
    for sid, data in sorted(down)[:LISTED]:
        data = data or _read(store, sid) or {}
        seen = data.get("last_seen_ms")
        ago = f"last seen {(now - seen) / 1000:.0f}s ago" if isinstance(seen, int) else "never seen"
        named.append(f"{sid} ({data.get('state', 'gone')}, {ago})")
    more = f" and {len(down) - LISTED} more" if len(down) > LISTED else ""
    return [(CHECK_WARNING, f"{len(down)} guest{'s' if len(down) != 1 else ''} down: "
                            f"{', '.join(named)}{more}")]


def _read(store, server_id: str) -> dict | None:
    try:
        data = store.get(SERVER_BUCKET, server_id).data
    except NotFound:
        return None
    return data if isinstance(data, dict) else None
