"""The status page's charts of the last hour: attempts ended per minute (succeeded, failed or
dead, retried, cancelled; a deferred one, put back without using an attempt, is in none), and
per action the p50 and p99 duration, per minute and over the hour.

They read the per-minute totals (``enstratus_action_minute``, kept by the recorder with the
events), never the events: 60 minutes times the (action, outcome) pairs seen, so a chart costs
the same at 1,000 events an hour as at 720,000 (``bench/pages.py`` measures it). Durations come
from the histograms of those rows (``quantile.histogram_quantile``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..db.analytics import EventStore, MinuteTotal
from ..db.schema import DURATION_BUCKETS, MINUTE_MS
from . import svg
from .quantile import histogram_quantile

MINUTES = 60
#: actions drawn (those with the most attempts in the hour); the table lists them all
MAX_CHARTED_ACTIONS = 6
_FAILED = ("failed", "dead")
_X_LABELS = {0: "−60 min", 15: "−45", 30: "−30", 45: "−15", MINUTES - 1: "now"}


@dataclass
class Latency:
    """One action's attempts in the hour: count, p50/p99 over it and, for the actions charted,
    per minute (None: none)."""

    action: str
    attempts: int = 0
    p50: float = math.nan
    p99: float = math.nan
    p50_by_minute: list = field(default_factory=lambda: [None] * MINUTES)
    p99_by_minute: list = field(default_factory=lambda: [None] * MINUTES)


@dataclass
class Hour:
    """What the charts draw: per minute of the last hour, oldest first."""

    first_minute_ms: int
    succeeded: list = field(default_factory=lambda: [0] * MINUTES)
    failed: list = field(default_factory=lambda: [0] * MINUTES)
    retried: list = field(default_factory=lambda: [0] * MINUTES)
    cancelled: list = field(default_factory=lambda: [0] * MINUTES)
    actions: list[Latency] = field(default_factory=list)


def _merge(rows: list[MinuteTotal]) -> tuple[int, tuple[int, ...]]:
    """Attempts and histogram of several rows together."""
    return (sum(r.attempts for r in rows),
            tuple(sum(column) for column in zip(*(r.buckets for r in rows))) or (0,) * len(DURATION_BUCKETS))


def _quantiles(rows: list[MinuteTotal]) -> tuple[float, float]:
    total, buckets = _merge(rows)
    return tuple(histogram_quantile(q, DURATION_BUCKETS, buckets, total) for q in (0.5, 0.99))


def last_hour(events: EventStore, now_ms: int) -> Hour:
    """The figures of the 60 minutes up to the one holding ``now_ms``."""
    first = now_ms - now_ms % MINUTE_MS - (MINUTES - 1) * MINUTE_MS
    hour = Hour(first)
    by_action: dict[str, list[MinuteTotal]] = defaultdict(list)
    for row in events.minutes(first):
        i = (row.minute_ms - first) // MINUTE_MS
        if not 0 <= i < MINUTES:        # a clock ahead of this host's: not in this hour
            continue
        series = {"succeeded": hour.succeeded, "retry": hour.retried, "cancelled": hour.cancelled,
                  **dict.fromkeys(_FAILED, hour.failed)}.get(row.outcome)
        if series is not None:
            series[i] += row.attempts
        by_action[row.action].append(row)
    for action, rows in by_action.items():
        latency = Latency(action, sum(r.attempts for r in rows))
        latency.p50, latency.p99 = _quantiles(rows)
        hour.actions.append(latency)
    hour.actions.sort(key=lambda a: (-a.attempts, a.action))
    for latency in hour.actions[:MAX_CHARTED_ACTIONS]:   # the others are in the table only
        per_minute: dict[int, list[MinuteTotal]] = defaultdict(list)
        for r in by_action[latency.action]:
            per_minute[(r.minute_ms - first) // MINUTE_MS].append(r)
        for i, minute_rows in per_minute.items():
            latency.p50_by_minute[i], latency.p99_by_minute[i] = _quantiles(minute_rows)
    return hour


def seconds(value: float) -> str:
    """A duration for people: ms under a second, s under a minute, then minutes."""
    if math.isnan(value):
        return "–"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 60 else f"{value / 60:.3g} min"


def charts_fragment(hour: Hour) -> str:
    """The charts' HTML (inline SVG): rendered here, swapped in by the page's script."""
    jobs = svg.line_chart("chart-jobs", "Attempts ended per minute, last hour", [
        svg.Series("succeeded", "s-succeeded", hour.succeeded),
        svg.Series("failed or dead", "s-failed", hour.failed),
        svg.Series("retried", "s-retried", hour.retried),
        svg.Series("cancelled", "s-cancelled", hour.cancelled)], _X_LABELS)
    parts = ['<h2>The last hour</h2>',
             '<figure class="chart-box"><figcaption>Attempts ended per minute: '
             '<span class="key s-succeeded">succeeded</span> <span class="key s-failed">failed or dead</span> '
             '<span class="key s-retried">retried</span> <span class="key s-cancelled">cancelled</span>'
             f'</figcaption>{jobs}</figure>',
             '<h3>Duration per action: <span class="key s-p50">p50</span> and <span class="key s-p99">p99</span></h3>',
             '<p class="hint">Estimated from each action\'s duration histogram (buckets of 5 ms to 300 s) as '
             'Prometheus\' <code>histogram_quantile</code> does: linear within a bucket, so exact only at the '
             'bounds; an attempt over 300 s counts as 300 s.</p>']
    if not hour.actions:
        return "\n".join(parts + ['<p id="latency-none">No attempt ended in the last hour.</p>'])
    rows = "".join(f'<tr data-action="{svg.escape(a.action)}"><td>{svg.escape(a.action)}</td>'
                   f'<td class="attempts">{a.attempts}</td><td class="p50">{seconds(a.p50)}</td>'
                   f'<td class="p99">{seconds(a.p99)}</td></tr>' for a in hour.actions)
    parts.append('<table id="latency"><thead><tr><th>action</th><th>attempts</th><th>p50</th><th>p99</th>'
                 f'</tr></thead><tbody>{rows}</tbody></table><div class="small-multiples">')
    for n, a in enumerate(hour.actions[:MAX_CHARTED_ACTIONS]):
        chart = svg.line_chart(f"chart-latency-{n}", f"{a.action}: p50 and p99 duration per minute", [
            svg.Series("p50", "s-p50", a.p50_by_minute), svg.Series("p99", "s-p99", a.p99_by_minute)],
            _X_LABELS, log=True, y_label=seconds)
        parts.append(f'<figure class="chart-box"><figcaption>{svg.escape(a.action)}</figcaption>{chart}</figure>')
    return "\n".join(parts) + "</div>"
