"""A job's page: its status and what it was asked to do, its attempts as a timeline, and the
server events it caused.

An attempt is known from its analytics event (``enstratus_job_event``: worker, host, duration,
outcome, error; its start is its end less its duration), and the attempt running now from the
job row. Events older than ``retention.events`` are pruned, so an old job's page may show fewer
attempts than it had: the page says so.
"""

from __future__ import annotations

from urllib.parse import urlencode

from ..db.analytics import Event, ServerEvent
from ..jobs.lifecycle import ACTIVE, DEAD, RUNNING
from . import svg
from .text import cut, e, pretty, took, when

_OUTCOME_CSS = {"succeeded": "s-succeeded", "failed": "s-failed", "dead": "s-failed", "retry": "s-retried",
                "running": "s-running", "cancelled": "s-cancelled"}


def _attempts(job: dict, events: list[Event], now_ms: int) -> list[dict]:
    """One dict per attempt, oldest first: the recorded ones, then the one running, if any."""
    rows = [{"attempt": ev.attempt, "worker": ev.worker, "host": ev.host,
             "start_ms": ev.event_timestamp - ev.duration_ms, "end_ms": ev.event_timestamp,
             "outcome": ev.outcome, "error": ev.error} for ev in events]
    recorded = {r["attempt"] for r in rows}
    if job["status"] == RUNNING and job["attempts"] not in recorded and job["start_timestamp"]:
        rows.append({"attempt": job["attempts"], "worker": job["worker"], "host": None,
                     "start_ms": job["start_timestamp"], "end_ms": None, "outcome": "running", "error": None})
    for r in rows:
        r["drawn_end_ms"] = r["end_ms"] or max(now_ms, r["start_ms"])
    return rows


def _buttons(job: dict, actions: frozenset[str]) -> str:
    """The operator's buttons for this job, where the daemon offers the call behind them."""
    out = []
    if "cancel" in actions and job["status"] in ACTIVE:
        out.append(f'<button type="button" id="cancel" class="stop" data-job="{job["job_id"]}">Cancel</button>')
    if "retry" in actions and job["status"] == DEAD:
        out.append(f'<button type="button" id="retry" class="start" data-job="{job["job_id"]}">Re-drive</button>')
    return f'<p class="actions">{" ".join(out)}</p>' if out else ""


def job_page_fragment(job: dict, events: list[Event], server_events: list[ServerEvent], now_ms: int,
                      actions: frozenset[str] = frozenset()) -> str:
    """The live part of a job's page. ``actions``: the buttons to offer ("cancel", "retry")."""
    jid = int(job["job_id"])
    facts = [("action", e(job["action"])), ("queue", e(job["queue"]))]
    if job.get("account") is not None:   # its jobs, a click away
        facts.append(("account", f'<a href="/ui/jobs?{e(urlencode({"account": job["account"]}))}">'
                                 f'{e(job["account"])}</a>'))
    facts += [("attempts", f'{job["attempts"]} of {job["max_attempts"]}'),
              ("idempotency key", e(job["idempotency_key"]) or "–"),
              ("created", when(job["created_timestamp"], True)), ("relayed", when(job["queued_timestamp"], True)),
              ("started", when(job["start_timestamp"], True)), ("ended", when(job["end_timestamp"], True)),
              ("worker", e(job["worker"]) or "–")]
    if job.get("cancel_requested_ms"):
        facts.append(("cancel requested", when(job["cancel_requested_ms"], True)))
    parts = [f'<div id="job" class="job-page" data-job="{jid}" data-status="{e(job["status"])}">'
             f'<p>Job <strong>{jid}</strong>: <strong class="status st-{e(job["status"])}">{e(job["status"])}</strong></p>'
             + _buttons(job, actions)
             + '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
    # what went wrong and how the attempts went first: that is what the page is opened for
    if job["error"]:
        parts.append(f'<h2>Error</h2><pre id="error" class="error">{e(job["error"])}</pre>')
    parts.append(_timeline(job, _attempts(job, events, now_ms)))
    parts.append(f'<h2>Arguments</h2><pre id="arguments">{pretty(job["arguments"])}</pre>')
    if job["result"] is not None:
        parts.append(f'<h2>Result</h2><pre id="result" class="result">{pretty(job["result"])}</pre>')
    parts.append(_server_events(server_events))
    return "\n".join(parts) + "</div>"


def _timeline(job: dict, attempts: list[dict]) -> str:
    head = "<h2>Attempts</h2>"
    if len(attempts) < job["attempts"]:
        head += (f'<p class="hint">{job["attempts"] - len(attempts)} earlier attempt(s) not shown: their '
                 "events are older than retention.events, or were never recorded.</p>")
    if not attempts:
        return head + '<p id="no-attempts">No attempt yet.</p>'
    bars = [svg.Bar(f'attempt {a["attempt"]}', a["start_ms"], a["drawn_end_ms"],
                    _OUTCOME_CSS.get(a["outcome"], "s-other"),
                    f'attempt {a["attempt"]}: {a["outcome"]}, {took(a["start_ms"], a["end_ms"])}') for a in attempts]
    rows = "".join(
        f'<tr data-attempt="{int(a["attempt"])}"><td>{int(a["attempt"])}</td><td>{e(a["worker"]) or "–"}</td>'
        f'<td>{e(a["host"]) or "–"}</td><td>{when(a["start_ms"], True)}</td><td>{when(a["end_ms"], True)}</td>'
        f'<td>{took(a["start_ms"], a["end_ms"])}</td><td class="outcome st-{e(a["outcome"])}">{e(a["outcome"])}</td>'
        f'<td class="error">{e(cut(a["error"] or "", 300)) or "–"}</td></tr>' for a in attempts)
    return (head + svg.timeline("attempts-timeline", f"job {int(job['job_id'])}: its attempts", bars)
            + '<table id="attempts"><thead><tr><th>attempt</th><th>worker</th><th>host</th><th>start (UTC)</th>'
              '<th>end (UTC)</th><th>took</th><th>outcome</th><th>error</th></tr></thead>'
              f"<tbody>{rows}</tbody></table>")


def _server_events(events: list[ServerEvent]) -> str:
    if not events:
        return '<h2>Server events</h2><p id="no-server-events">None: this job changed no server\'s state.</p>'
    rows = "".join(f"<tr><td>{when(s.event_timestamp, True)}</td><td>{e(s.server_id)}</td><td>{e(s.account) or '–'}</td>"
                   f"<td>{e(s.old_state) or '–'} → {e(s.new_state)}</td></tr>" for s in events)
    return ('<h2>Server events</h2><table id="server-events"><thead><tr><th>when (UTC)</th><th>server</th>'
            f'<th>account</th><th>state</th></tr></thead><tbody>{rows}</tbody></table>')
