"""The Dead tab: the dead jobs, newest first, each with a button that re-drives it, and one that
re-drives them all (``POST /jobs/{id}/retry``, ``POST /jobs/dead/retry`` through ``/ui/api``)."""

from __future__ import annotations

from .render import job_link
from .text import cut, e, when


def dead_fragment(jobs: list[dict], total: int) -> str:
    """``jobs``: the newest dead jobs shown; ``total``: how many are dead in all."""
    shown = f"the newest {len(jobs)} of {total}" if len(jobs) < total else f"{total}"
    head = (f'<p id="dead-count" data-total="{int(total)}">Dead jobs: <strong>{shown}</strong>. A re-drive '
            "gives a job another round of attempts (action.max_attempts); the publisher relays it.</p>"
            + ('<p><button type="button" id="retry-all" class="start">Re-drive all dead jobs</button></p>'
               if total else ""))
    rows = "".join(
        f'<tr data-job="{int(j["job_id"])}"><td>{job_link(j["job_id"])}</td><td>{e(j["action"])}</td>'
        f'<td>{e(j["queue"])}</td><td class="account">{e(j.get("account")) or "–"}</td>'
        f'<td>{j["attempts"]}/{j["max_attempts"]}</td><td>{when(j["end_timestamp"] or j["start_timestamp"])}</td>'
        f'<td class="outcome">{e(cut(j["error"] or ""))}</td>'
        f'<td><button type="button" class="retry start" data-job="{int(j["job_id"])}" '
        f'title="re-drive this job">Re-drive</button></td></tr>' for j in jobs)
    return (head + '<table id="dead"><thead><tr><th>id</th><th>action</th><th>queue</th><th>account</th>'
            '<th>attempts</th><th>last attempt (UTC)</th><th>error</th><th></th></tr></thead>'
            f'<tbody>{rows or "<tr><td colspan=8>no dead jobs</td></tr>"}</tbody></table>')
