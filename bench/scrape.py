"""How long one Prometheus scrape of the service takes at a history of N jobs and N events.

Fills SQLite provisioning and analytics databases in ``--dir`` (once; reused when they are
there) through the stores' own write paths: N jobs submitted, each recorded finished
(succeeded, a tenth failed) with one event, durations spread over the histogram, over 20
actions (``--actions K``: over K names, as a client inventing names makes them). Then times
``--repeat`` scrapes (``generate_latest`` of the service's registry, the queue left out) and
prints the median and the fastest in ms. ``--fold`` first folds the action totals past the names
kept into ``(other)``, as a retention pass does (``analytics.fold_totals``), and prints how long
that took (it changes the databases: a later run reads them folded).

``--code DIR`` imports enstratus_workers from another checkout (e.g. the release before this
one, to compare): it reads the same databases, opened without touching their schema. Fill with
this checkout's code, so that the totals a newer release reads are there.

usage: .venv/bin/python bench/scrape.py N --dir DIR [--actions 20] [--fold] [--repeat 7] [--code CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ACTIONS = 20
CHUNK = 5000


def _args():
    p = argparse.ArgumentParser(prog="bench/scrape.py")
    p.add_argument("n", type=int, help="jobs and events in the history")
    p.add_argument("--dir", required=True, type=Path, help="where the databases are (made if missing)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--actions", type=int, default=ACTIONS, help="action names the history is spread over")
    p.add_argument("--fold", action="store_true", help="fold the action totals first, as retention does")
    p.add_argument("--code", type=Path, default=REPO, help="checkout whose enstratus_workers scrapes")
    return p.parse_args()


def main() -> int:
    args = _args()
    sys.path.insert(0, str(args.code.resolve()))
    from prometheus_client import generate_latest

    from enstratus_workers.config import settings as cs
    from enstratus_workers.db import Event, NewJob, Outcome, open_databases
    from enstratus_workers.layout import Layout
    from enstratus_workers.metrics import make_registry

    args.dir.mkdir(parents=True, exist_ok=True)
    prov, anal = args.dir / "prov.db", args.dir / "anal.db"
    worker = cs.WorkerSettings(provisioning_url=cs.Secret(f"sqlite:///{prov}"),
                               analytics_url=cs.Secret(f"sqlite:///{anal}"))
    layout = Layout(args.dir)
    if not prov.exists():
        dbs = open_databases(worker, layout)
        t0 = time.monotonic()
        durations = (3, 40, 120, 700, 2_000, 20_000)
        for start in range(0, args.n, CHUNK):
            size = min(CHUNK, args.n - start)
            dbs.jobs.submit_many([NewJob(f"bench.action{(start + i) % args.actions}", "{}", "default", 3)
                                  for i in range(size)])
            ids = range(start + 1, start + size + 1)
            outcomes = [Outcome(j, 1, "failed" if j % 10 == 0 else "succeeded", "w@bench.1", 1, 2, None, None,
                                "subscriber@bench:1:aaaa") for j in ids]
            assert len(dbs.jobs.record_outcomes(outcomes)) == size
            dbs.events.record([Event(o.job_id, f"bench.action{(o.job_id - 1) % args.actions}", "default", 1,
                                     o.status, durations[o.job_id % len(durations)], o.worker, 2)
                               for o in outcomes])
        dbs.close()
        print(f"filled {args.n} jobs and events in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    settings = cs.Settings(home=args.dir, mq=cs.MQSettings(), worker=worker, persistence=cs.PersistenceSettings(),
                           km_client=cs.KMClientSettings(), provisioning=cs.ProvisioningSettings())
    dbs = open_databases(worker, layout, ensure=False)
    folded = None
    try:
        if args.fold:
            from enstratus_workers.db.analytics import fold_totals

            t0, folded, more = time.perf_counter(), 0, True
            while more:
                n, more = fold_totals(dbs.analytics, batch=500)
                folded += n
            print(f"folded {folded} rows of action totals in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
        registry = make_registry(settings, layout, dbs=dbs, depths=lambda queues: [])
        text = generate_latest(registry).decode()   # warm: connections, page cache
        assert 'enstratus_workers_up{source="analytics"} 1.0' in text, text
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            generate_latest(registry)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        dbs.close()
    import enstratus_workers
    print(json.dumps({"n": args.n, "code": str(Path(enstratus_workers.__file__).parent.parent), "median_ms": round(statistics.median(times), 2),
                      "min_ms": round(min(times), 2), "repeat": args.repeat,
                      "actions": args.actions, "folded": folded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
