"""The status page's charts of the last hour: the per-minute totals the recorder keeps with the
events, the quantiles computed from their histograms as Prometheus' histogram_quantile does,
and the SVG drawn from them."""

from __future__ import annotations

import math
import re

import pytest

from enstratus_workers.admin import charts
from enstratus_workers.admin.quantile import histogram_quantile
from enstratus_workers.clock import now_ms
from enstratus_workers.db import Event
from enstratus_workers.db.schema import DURATION_BUCKETS, MINUTE_MS
from tests.unit.admin_helpers import api, home  # noqa: F401 (fixtures)

B = DURATION_BUCKETS   # 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300 s


def counts(**by_bound) -> list[int]:
    """A histogram with these counts at these bounds (``le_1=50``: 50 in (0.5, 1])."""
    out = [0] * len(B)
    for name, n in by_bound.items():
        out[B.index(float(name[3:].replace("_", ".")))] = n
    return out


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does():
    # Ten attempts between 50 and 100 ms: the median is taken halfway through that bucket
    ten = counts(le_0_1=10)
    assert histogram_quantile(0.5, B, ten, 10) == pytest.approx(0.075)
    assert histogram_quantile(0.99, B, ten, 10) == pytest.approx(0.0995)
    # Half under 5 ms (the first bucket starts at 0), half in (1, 2.5] s
    mixed = counts(le_0_005=50, le_2_5=50)
    assert histogram_quantile(0.5, B, mixed, 100) == pytest.approx(0.005)
    assert histogram_quantile(0.99, B, mixed, 100) == pytest.approx(1 + 1.5 * 49 / 50)
    # A rank past the last bound (+Inf) gives the last bound; none at all gives NaN
    assert histogram_quantile(0.99, B, counts(le_1=90), 100) == 300.0
    assert math.isnan(histogram_quantile(0.5, B, [0] * len(B), 0))
    with pytest.raises(ValueError):
        histogram_quantile(1.5, B, ten, 10)


#: one "now" for a whole test: a minute that ends mid-test must not shift the figures
NOW = now_ms()


def minute_ago(n: int) -> int:
    """A time inside the minute ``n`` minutes before the one holding ``NOW``, never after it."""
    return NOW - n * MINUTE_MS


def test_the_last_hour_is_drawn_from_the_per_minute_totals_not_the_events(api):
    events = api.ctx.dbs.events
    # Given attempts two minutes ago (3 succeeded in 60-80 ms), a minute ago (a failure, a dead
    # end, two retries, all of 2 s) and two hours ago (not in the chart)
    events.record([Event(1, "server.launch", "default", 1, "succeeded", 60 + 10 * i, "w", minute_ago(2)) for i in range(3)]
                  + [Event(2, "server.launch", "default", 1, o, 2000, "w", minute_ago(1))
                     for o in ("failed", "dead", "retry", "retry")]
                  + [Event(3, "<b>echo</b>", "default", 1, "succeeded", 1, "w", minute_ago(120))])
    # When the events themselves are gone (retention), the figures stay: they are the rollup's
    with api.ctx.dbs.analytics.begin() as conn:
        conn.exec_driver_sql("DELETE FROM enstratus_job_event")
    hour = charts.last_hour(events, NOW)
    # Then each minute has its attempts, by how they ended
    assert (hour.succeeded[57], hour.failed[58], hour.retried[58]) == (3, 2, 2)
    assert sum(hour.succeeded) == 3 and sum(hour.failed) == 2 and sum(hour.retried) == 2
    # And per action, the p50 and p99 of the hour from the histogram: 7 attempts, 3 in
    # (50, 100] ms and 4 in (1, 2.5] s
    (launch,) = hour.actions
    assert (launch.action, launch.attempts) == ("server.launch", 7)
    assert launch.p50 == pytest.approx(1 + 1.5 * (3.5 - 3) / 4)
    assert launch.p99 == pytest.approx(1 + 1.5 * (6.93 - 3) / 4)
    assert launch.p50_by_minute[57] == pytest.approx(0.075) and launch.p50_by_minute[56] is None
    # And the fragment draws them: a line per outcome with its total, the table, a chart per action
    html = charts.charts_fragment(hour)
    totals = dict(re.findall(r'data-series="([^"]+)" data-total="([^"]+)"', html))
    assert totals == {"succeeded": "3", "failed or dead": "2", "retried": "2", "cancelled": "0",
                      "p50": totals["p50"], "p99": totals["p99"]}
    assert '<tr data-action="server.launch"><td>server.launch</td><td class="attempts">7</td>' in html
    assert "histogram_quantile" in html and 'id="chart-latency-0"' in html


def test_the_charts_escape_action_names_and_say_when_the_hour_was_empty(api):
    assert "No attempt ended in the last hour" in api.call("GET", "/ui/fragments/charts").text
    api.ctx.dbs.events.record([Event(1, "<script>x</script>", "default", 1, "succeeded", 5, "w", now_ms())])
    page = api.call("GET", "/ui/status").text
    assert 'id="chart-jobs"' in page and "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert api.browser().get("/ui/fragments/charts").status_code == 401


def test_the_per_minute_totals_add_up_to_the_action_totals(api):
    # Given events of several actions and outcomes over a few minutes
    events = api.ctx.dbs.events
    events.record([Event(i, f"a{i % 3}", "default", 1, ("succeeded", "failed")[i % 2], i * 37, "w",
                         minute_ago(i % 4)) for i in range(1, 200)])
    # Then summed over the minutes, the rollup is the totals the metrics read
    per_minute: dict = {}
    for m in events.minutes(0):
        row = per_minute.setdefault((m.action, m.outcome), [0, 0, [0] * len(B)])
        row[0] += m.attempts
        row[1] += m.duration_ms
        row[2] = [a + b for a, b in zip(row[2], m.buckets)]
    assert per_minute == {(t.action, t.outcome): [t.attempts, t.duration_ms, list(t.buckets)]
                          for t in events.totals()}
