"""HTML of the pages' live parts, rendered on the server from the API's own figures.

The pages' script fetches these fragments every few seconds and swaps them in, so all rendering
is here, in one language, from the same dicts ``/status`` and ``/jobs`` return; the script only
swaps HTML and calls the API. Every value is escaped: job arguments, results and errors are text
that users typed or clouds returned.
"""

from __future__ import annotations

import json

from ..db.schema import STATUSES, TERMINAL
from .hosts_html import hosts_fragment
from .render_pauses import accounts_fragment, queue_relay_cell
from .text import cut as _cut
from .text import e as _e
from .text import num as _num
from .text import pretty, took
from .text import when as _time


def status_fragment(fig: dict, pauses: list = ()) -> str:
    """Health, worker types (desired vs on-line, start/stop), queues (paused or relayed) and the
    paused accounts, hosts and clusters. ``pauses``: ``db/pauses.Pause`` values."""
    paused_queues = {p.name: p.since_ms for p in pauses if p.kind == "queue"}
    health = fig["health"]
    problems = "".join(f"<li>{_e(p)}</li>" for p in health["problems"])
    parts = [f'<p class="health {_e(health["state"].lower())}" id="health">Health: '
             f'<strong>{_e(health["state"])}</strong></p>' + (f"<ul class=problems>{problems}</ul>" if problems else "")]
    rows = []
    for i in fig["instances"]:
        c = i["concurrency"]
        rows.append(
            f'<tr data-type="{_e(i["type"])}" data-id="{i["id"]}" class="{"" if i["enabled"] else "disabled"}">'
            f'<td>{_e(i["type"])}</td><td>{_e(", ".join(i["queues"]))}</td>'
            f'<td class="placement">{_e(", ".join(i.get("placement", ["*"])))}</td>'
            f'<td class="enabled">{"yes" if i["enabled"] else "no"}</td>'
            f'<td class="desired">{c["min"]}–{c["max"]}</td><td class="online">{i["online"]}</td>'
            f'<td><button class="start" data-id="{i["id"]}" title="start: one process more, or enable">&#9650;</button> '
            f'<button class="stop" data-id="{i["id"]}" title="stop: disable this worker type">&#10006;</button></td></tr>')
    parts.append('<h2>Worker types</h2><table id="instances"><thead><tr><th>type</th><th>queues</th>'
                 '<th>placed on</th><th>enabled</th><th>desired per host (min–max)</th><th>on-line</th>'
                 '<th></th></tr></thead>'
                 f'<tbody>{"".join(rows) or "<tr><td colspan=7>no worker types</td></tr>"}</tbody></table>')
    rows = []
    for q in fig["queues"]:
        want = q["workers_desired"]
        rows.append(
            f'<tr data-queue="{_e(q["name"])}"><td>{_e(q["name"])}</td><td>{_e(", ".join(q["consumed_by"])) or "–"}</td>'
            f'<td class="online">{q["workers_online"]}</td><td>{want["min"]}–{want["max"]}</td>'
            f'<td class="consumers">{_num(q["consumers"])}</td><td class="ready">{_num(q["ready"])}</td>'
            f'<td class="unacked">{_num(q["unacked"])}</td><td>{_num(q["delayed"])}</td><td>{_num(q["dead"])}</td>'
            + queue_relay_cell(q["name"], paused_queues.get(q["name"])) + '</tr>')
    error = f'<p class="error">queue depths unavailable: {_e(fig["depth_error"])}</p>' if fig["depth_error"] else ""
    parts.append('<h2>Queues</h2>' + error + '<table id="queues"><thead><tr><th>queue</th><th>consumed by</th>'
                 '<th>managed workers on-line</th><th>desired</th><th>consumers running</th><th>ready</th>'
                 '<th>unacked</th><th>delayed</th><th>dead</th><th>relay</th></tr></thead>'
                 f'<tbody>{"".join(rows) or "<tr><td colspan=10>no queues</td></tr>"}</tbody></table>')
    parts.append(accounts_fragment([p for p in pauses if p.kind == "account"]))
    rows = []
    for c in fig["clusters"]:
        by_state = ", ".join(f"{n} {s}" for s, n in c["workers_by_state"].items() if n) or "none"
        st = c["stats"]
        rows.append(
            f'<tr><td>{_e(c["cluster_id"])}</td><td class="st-{_e(c["status"])}">{_e(c["status"])}</td>'
            f'<td>{_e(c["pid"])}</td><td>{_e(c["uptime_s"])} s</td><td>{_e(by_state)}</td>'
            f'<td>{_e(c["task_q_size"])}</td><td>{_e(st.get("received", 0))} / {_e(st.get("succeeded", 0))} / '
            f'{_e(st.get("failed", 0))}</td><td>{_e(c["reincarnations"])}</td></tr>')
    parts.append(hosts_fragment(fig.get("hosts", []), fig["observed_ms"]))
    parts.append('<h2>Subscribers (from their heartbeats)</h2><table id="clusters"><thead><tr><th>cluster</th>'
                 '<th>status</th><th>pid</th><th>up</th><th>workers</th><th>tasks held</th>'
                 '<th>received / succeeded / failed</th><th>restarts</th></tr></thead>'
                 f'<tbody>{"".join(rows) or "<tr><td colspan=8>no subscriber is beating</td></tr>"}</tbody></table>')
    return "\n".join(parts)


def outcome(job: dict) -> str:
    """A job's result or error, short."""
    if job["error"]:
        return _cut(job["error"])
    if job["result"] is not None:
        return _cut(json.dumps(job["result"], sort_keys=True))
    return ""


def job_fragment(job: dict) -> str:
    """The Launch page's outcome box for one job."""
    done = job["status"] in TERMINAL
    return (f'<div class="job st-{_e(job["status"])}" id="outcome" data-job="{job["job_id"]}" '
            f'data-status="{_e(job["status"])}" data-done="{"yes" if done else "no"}">'
            f'<p>Job <strong>{job["job_id"]}</strong> ({_e(job["action"])} on {_e(job["queue"])}): '
            f'<strong class="status">{_e(job["status"])}</strong>, attempt {job["attempts"]} of {job["max_attempts"]}</p>'
            + (f'<pre class="result">{pretty(job["result"])}</pre>'
               if job["result"] is not None else "")
            + (f'<pre class="error">{_e(job["error"])}</pre>' if job["error"] else "") + "</div>")


def job_link(job_id: int) -> str:
    return f'<a href="/ui/jobs/{int(job_id)}" class="job-link">{int(job_id)}</a>'


def jobs_fragment(stats: dict, jobs: list[dict], filtered: bool = False) -> str:
    """Counts since the last reset and the latest jobs (those the filters match) with their
    outcome, each linked to its page."""
    cells = "".join(f'<td class="count-{s}">{stats["counts"].get(s, 0)}</td>' for s in STATUSES)
    since = f"since {_time(stats['since_ms'])} UTC" if stats["since_ms"] else "since ever"
    parts = [f'<h2>Jobs by status <small id="since">{_e(since)}</small></h2>'
             f'<table id="counts"><thead><tr>{"".join(f"<th>{s}</th>" for s in STATUSES)}<th>total</th></tr></thead>'
             f'<tbody><tr>{cells}<td class="count-total">{stats["total"]}</td></tr></tbody></table>']
    rows = []
    for j in jobs:
        rows.append(
            f'<tr data-job="{j["job_id"]}"><td>{job_link(j["job_id"])}</td><td>{_e(j["action"])}</td>'
            f'<td>{_e(j["queue"])}</td><td class="account">{_e(j.get("account")) or "–"}</td>'
            f'<td class="status st-{_e(j["status"])}">{_e(j["status"])}</td><td>{j["attempts"]}/{j["max_attempts"]}</td>'
            f'<td>{_time(j["created_timestamp"])}</td><td>{took(j["start_timestamp"], j["end_timestamp"])}</td>'
            f'<td>{_e(j["worker"]) or "–"}</td><td class="outcome">{_e(outcome(j))}</td></tr>')
    none = "no job matches the filters" if filtered else "no jobs"
    parts.append(f'<h2>{"Jobs matching the filters" if filtered else "Latest jobs"}</h2><table id="jobs"><thead>'
                 '<tr><th>id</th><th>action</th><th>queue</th><th>account</th><th>status</th><th>attempts</th>'
                 '<th>created (UTC)</th><th>took</th><th>worker</th><th>outcome</th></tr></thead>'
                 f'<tbody>{"".join(rows) or f"<tr><td colspan=10>{none}</td></tr>"}</tbody></table>')
    return "\n".join(parts)
