"""The hosts of the fleet as lines of text: ``enstratus-workers status`` and the terminal monitor."""

from __future__ import annotations

from ..db.heartbeats import clock_note
from .hosts import DEAD, HostView


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def host_line(h: HostView, now_ms: int) -> str:
    """``host2  DEAD  last heartbeat 35s ago  subscriber@host2 dead, ...  workers 0``."""
    daemons = ", ".join(f"{d['daemon']}@{d['name']}" + (" dead" if d["state"] == DEAD else "")
                        for d in h.daemons) or "no daemon beating"
    tags = f" [{', '.join(h.tags)}]" if h.tags else ""
    clock = clock_note(h.clock_offset_ms)
    return (f"{h.name}{tags}  {h.state.upper()}  last heartbeat {_ago(h.last_heartbeat_ms, now_ms)}  "
            f"{daemons}  workers {h.worker_processes}" + (f"  {clock}" if clock else ""))


def host_lines(hosts: list[HostView], now_ms: int) -> list[str]:
    """A header and a line per host (and each host's worker processes, indented)."""
    lines = [f"hosts: {len(hosts)} ({sum(h.state == 'alive' for h in hosts)} alive)"]
    for h in hosts:
        lines.append("  " + host_line(h, now_ms))
        lines.extend(f"      {w['display'] or w['name']} pid {w['pid'] or '-'} {w['state']}" for w in h.workers)
    return lines
