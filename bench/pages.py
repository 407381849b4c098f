"""What the status page's charts of the last hour cost at 1,000 and at 720,000 events in that hour
(the soak test's 200 jobs/s for an hour), on SQLite.

For each size, fills an analytics database in a scratch folder through the recorder's own write
path (``EventStore.record``: the events and, in the same transaction, their per-minute totals),
the events spread evenly over the last hour, 20 actions, durations over the histogram, a tenth
failed. Then times ``--repeat`` renderings of the charts (``charts.last_hour`` +
``charts.charts_fragment``: what ``/ui/fragments/charts`` and the status page do) and prints the
median and fastest in ms (the sizes timed in turn, round after round, so a change of the
machine's load weighs on each alike), the per-minute rows they read, and the ratios of the last
size to the first. (With 20 actions, the small size has fewer (action, outcome) pairs per minute than the
large, so it reads somewhat fewer rows.)

For contrast it also times what the charts would cost read from the events themselves (the
same per-minute sums grouped from ``enstratus_job_event`` over the hour), which is what the
per-minute totals spare.

usage: .venv/bin/python bench/pages.py [--sizes 1000 720000] [--repeat 15] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACTIONS = 20
CHUNK = 5000
DURATIONS_MS = (3, 40, 120, 700, 2_000, 20_000)


def _args():
    p = argparse.ArgumentParser(prog="bench/pages.py")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 720_000], help="events in the last hour")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--dir", type=Path, help="where the databases go (default: a scratch folder, removed)")
    return p.parse_args()


def fill(events, n: int, now: int) -> None:
    """``n`` events spread evenly over the 60 minutes the charts show (up to ``now``)."""
    from enstratus_workers.db import Event
    from enstratus_workers.db.schema import MINUTE_MS

    first = now - now % MINUTE_MS - 59 * MINUTE_MS
    for start in range(0, n, CHUNK):
        events.record([Event(i, f"bench.action{i % ACTIONS}", "default", 1, "failed" if i % 10 == 0 else "succeeded",
                             DURATIONS_MS[i % len(DURATIONS_MS)], "w@bench.1", first + (i * (now - first)) // n)
                       for i in range(start, min(start + CHUNK, n))])


def interleaved(fns: list, repeat: int) -> list[dict]:
    """Median and fastest ms of each of ``fns``, timed in turn, round after round: a machine
    whose load changes meanwhile weighs on all of them alike."""
    for fn in fns:
        fn()   # warm: connections, page cache
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    return [{"median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2)} for t in times]


def from_events(engine, now: int) -> list:
    """The charts' per-minute sums grouped from the events of the hour: what the rollup spares."""
    import sqlalchemy as sa

    from enstratus_workers.db import schema

    E, first = schema.events, now - now % schema.MINUTE_MS - 59 * schema.MINUTE_MS
    minute = (E.c.event_timestamp - E.c.event_timestamp % schema.MINUTE_MS).label("minute_ms")
    q = (sa.select(minute, E.c.action, E.c.outcome, *schema._event_sums())
         .where(E.c.event_timestamp >= first).group_by(minute, E.c.action, E.c.outcome))
    with engine.connect() as conn:
        return conn.execute(q).all()


def main() -> int:
    args = _args()
    from enstratus_workers.admin import charts
    from enstratus_workers.clock import now_ms
    from enstratus_workers.db.analytics import EventStore
    from enstratus_workers.db.engine import make_engine
    from enstratus_workers.db.migrate import upgrade
    from enstratus_workers.layout import Layout

    root = args.dir or Path(tempfile.mkdtemp(prefix="ewbench-pages-"))
    results, engines = [], []
    try:
        for n in args.sizes:
            folder = root / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)   # always a fresh database of exactly n events
            folder.mkdir(parents=True)
            engine = make_engine(f"sqlite:///{folder / 'analytics.db'}", Layout(folder))
            engines.append(engine)
            upgrade(engine, "analytics")
            events, now = EventStore(engine), now_ms()
            t0 = time.monotonic()
            fill(events, n, now)
            hour = charts.last_hour(events, now)
            assert sum(hour.succeeded) + sum(hour.failed) == n, "every event of the hour is charted"
            results.append({"events": n, "fill_s": round(time.monotonic() - t0, 1),
                            "minute_rows": len(events.minutes(hour.first_minute_ms)),
                            "draw": (lambda ev=events, t=now: charts.charts_fragment(charts.last_hour(ev, t))),
                            "group": (lambda e=engine, t=now: from_events(e, t))})
        for what in ("charts", "from_events"):
            key = "draw" if what == "charts" else "group"
            for row, figures in zip(results, interleaved([r[key] for r in results], args.repeat)):
                row[what] = figures
    finally:
        for engine in engines:
            engine.dispose()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    for row in results:
        print(json.dumps({k: v for k, v in row.items() if k not in ("draw", "group")}))
    small, large = results[0], results[-1]
    print(f"per-minute rows read: {large['minute_rows']} / {small['minute_rows']} = "
          f"{large['minute_rows'] / small['minute_rows']:.2f}x (bounded by 60 x actions x outcomes)")
    for what in ("charts", "from_events"):
        print(f"{what}: {large['events']} events / {small['events']} events = "
              f"{large[what]['median_ms'] / small[what]['median_ms']:.2f}x (medians "
              f"{large[what]['median_ms']} ms / {small[what]['median_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
