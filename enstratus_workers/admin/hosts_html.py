"""The Hosts part of the Server Status page: every host of the fleet (``fleet/hosts.py``), with
its state, last heartbeat, daemons and worker processes. Rendered on the server from the same
dicts ``GET /hosts`` returns; every value escaped (host and daemon names come from config files)."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from ..db.heartbeats import clock_note
from .strictbody import printable


def _e(value) -> str:
    return "" if value is None else escape(printable(str(value)))


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "–"
    seconds = max(0, (now_ms - ms) // 1000)
    stamp = datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} UTC ({seconds} s ago)"


def _clock(offset_ms) -> str:
    note = clock_note(offset_ms)
    return f' <small class="clock">{_e(note)}</small>' if note else ""


def hosts_fragment(hosts: list[dict], now_ms: int) -> str:
    """A row per host: name and tags, state, last heartbeat, its daemons, its worker processes."""
    rows = []
    for h in hosts:
        daemons = ", ".join(f'<span class="st-{_e(d["state"])}">{_e(d["daemon"])}@{_e(d["name"])} '
                            f'{_e(d["state"])}</span>' for d in h["daemons"]) or "none beating"
        workers = ", ".join(f'{_e(w["display"] or w["name"])} {_e(w["state"])}' for w in h["workers"]) or "–"
        tags = f' <small>{_e(", ".join(h["tags"]))}</small>' if h["tags"] else ""
        clock = _clock(h.get("clock_offset_ms"))
        rows.append(
            f'<tr data-host="{_e(h["name"])}" class="host-{_e(h["state"])}"><td>{_e(h["name"])}{tags}</td>'
            f'<td class="state st-{_e(h["state"])}">{_e(h["state"])}{clock}</td>'
            f'<td class="beat">{_ago(h["last_heartbeat_ms"], now_ms)}</td><td class="daemons">{daemons}</td>'
            f'<td class="workers">{h["worker_processes"]}: {workers}</td></tr>')
    return ('<h2>Hosts</h2><table id="hosts"><thead><tr><th>host</th><th>state</th><th>last heartbeat</th>'
            '<th>daemons</th><th>worker processes</th></tr></thead>'
            f'<tbody>{"".join(rows) or "<tr><td colspan=5>no host has beaten yet</td></tr>"}</tbody></table>')
