"""The pauses on the Server Status page: each queue's row says whether its jobs are relayed, with
a button that pauses or resumes it; the paused accounts are listed with a Resume button each
(``POST /queues/{name}/pause|resume``, ``POST /accounts/{account}/pause|resume`` through
``/ui/api``). The form that pauses an account is in the page itself (``status.html``), outside
the part that is refreshed, so what is typed into it stays."""

from __future__ import annotations

from urllib.parse import urlencode

from .text import e, when


def _button(verb: str, kind: str, name: str) -> str:
    sign = "&#10073;&#10073;" if verb == "pause" else "&#9654;"   # ❙❙ and ▶: fonts without ⏸ have these
    return (f'<button type="button" class="{verb}" data-kind="{kind}" data-name="{e(name)}" '
            f'title="{verb} this {kind}: its jobs {"wait in the outbox" if verb == "pause" else "are relayed again"}">'
            f'{sign} {verb}</button>')


def queue_relay_cell(name: str, paused_since: int | None) -> str:
    """The cell of a queue's row: relayed (and a Pause button), or paused since when (Resume)."""
    if paused_since is None:
        return f'<td class="relay">relayed {_button("pause", "queue", name)}</td>'
    return (f'<td class="relay paused">paused since {when(paused_since)} UTC '
            f'{_button("resume", "queue", name)}</td>')


def accounts_fragment(paused: list) -> str:
    """The paused accounts (``db/pauses.Pause`` values of kind account)."""
    rows = "".join(f'<tr data-account="{e(p.name)}"><td><a href="/ui/jobs?{e(urlencode({"account": p.name}))}">'
                   f'{e(p.name)}</a></td><td>{when(p.since_ms)}</td><td>{_button("resume", "account", p.name)}</td></tr>'
                   for p in paused)
    return ('<h2>Paused accounts</h2><table id="paused-accounts"><thead><tr><th>account</th><th>paused since (UTC)</th><th></th></tr></thead>'
            f'<tbody>{rows or "<tr><td colspan=3>no account is paused</td></tr>"}</tbody></table>')
