"""The Audit page: operator actions, newest first, a page at a time, filtered by action."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from .text import cut, e, when


def _state(value) -> str:
    return "–" if value is None else e(cut(json.dumps(value, sort_keys=True, ensure_ascii=False), 300))


def audit_fragment(entries: list[dict], next_before: int | None, action: str | None) -> str:
    """A page of the log (``GET /audit``'s entries), with the link to the next, older one."""
    rows = "".join(
        f'<tr data-audit="{int(a["audit_id"])}" data-action="{e(a["action"])}"><td>{when(a["at_ms"], True)}</td>'
        f'<td class="actor">{e(a["actor"])}</td><td>{e(a["via"])}</td><td>{e(a["client"]) or "–"}</td>'
        f'<td class="action">{e(a["action"])}</td><td class="target">{e(a["target"]) or "–"}</td>'
        f'<td class="status">{int(a["status"])}{(" " + e(cut(a["detail"], 200))) if a["detail"] else ""}</td>'
        f'<td class="state">{_state(a["before_state"])}</td><td class="state">{_state(a["after_state"])}</td></tr>'
        for a in entries)
    more = ""
    if next_before is not None:
        query = urlencode({k: v for k, v in (("action", action), ("before", next_before)) if v is not None})
        more = f'<p><a id="older" href="/ui/audit?{e(query)}">Older actions →</a></p>'
    return ('<table id="audit"><thead><tr><th>when (UTC)</th><th>who</th><th>via</th><th>from</th><th>action</th>'
            '<th>target</th><th>answer</th><th>before</th><th>after</th></tr></thead>'
            f'<tbody>{rows or "<tr><td colspan=9>no action recorded</td></tr>"}</tbody></table>{more}')
