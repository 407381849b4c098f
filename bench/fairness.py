"""Fair shares on RabbitMQ + MariaDB: how long an account that comes later waits behind another's backlog.

``--backlog`` (10,000) no-op jobs of account A are stored at once (one transaction, as the bulk
API stores a list), then ``--late`` (20) of account B. For each window measured (the shipped
``publisher.window``, and one as large as the backlog: as good as none, the relay as it was
before fair shares), in a service of its own: when B's last job ended, as its rank among all
the outcomes and in seconds after B was submitted, beside the time A's whole backlog took. The
ratio B-wait / backlog-time is the figure: near 1 when B waits behind the backlog, small when
it is served in turn.

usage: .venv/bin/python bench/fairness.py [--backlog 10000] [--late 20] [--window N ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from harness import BenchFailed, figure, started_service, wait_succeeded

from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.db import NewJob


def run(backlog: int, late: int, window: int) -> dict:
    with started_service(worker_props={"publisher.window": window}) as service:
        dbs, queue = service.dbs, service.settings.worker.default_queue
        base = dbs.jobs.counts()["succeeded"]
        with dbs.provisioning.connect() as conn:
            first_id = conn.execute(sa.text("SELECT COALESCE(MAX(job_id), 0) FROM enstratus_job")).scalar()
        dbs.jobs.submit_many([NewJob("noop", "{}", queue, 1, account="A")] * backlog)
        dbs.jobs.submit_many([NewJob("noop", "{}", queue, 1, account="B")] * late)
        wait_succeeded(dbs, base + backlog + late, timeout=600)
        with dbs.provisioning.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT job_id, account, end_timestamp FROM enstratus_job WHERE job_id > :first"),
                {"first": first_id}).all()
    ended = sorted(rows, key=lambda r: (r.end_timestamp, -r.job_id))
    ranks = [i + 1 for i, r in enumerate(ended) if r.account == "B"]
    if len(ranks) != late:
        raise BenchFailed(f"{len(ranks)} of B's {late} jobs were found")
    first_ms = min(r.end_timestamp for r in rows)
    b_last_ms = max(r.end_timestamp for r in rows if r.account == "B")
    all_last_ms = max(r.end_timestamp for r in rows)
    return {"rank": ranks[-1], "of": len(ended), "b_s": (b_last_ms - first_ms) / 1000,
            "all_s": (all_last_ms - first_ms) / 1000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=10000, help="jobs of account A, stored at once")
    ap.add_argument("--late", type=int, default=20, help="jobs of account B, stored right after")
    ap.add_argument("--window", type=int, action="append", default=[],
                    help="windows to measure (default: the shipped one, and one as large as the backlog)")
    args = ap.parse_args(argv)
    if not (1 <= args.backlog <= 1_000_000 and 1 <= args.late <= 100_000):
        ap.error("--backlog must be 1..1000000 and --late 1..100000")
    windows = args.window or [WorkerSettings().publisher_window, args.backlog + args.late]
    for window in windows:
        r = run(args.backlog, args.late, window)
        figure(f"publisher.window={window}: B's last of {args.late} ended",
               f"{r['rank']}th of {r['of']}, {r['b_s']:.2f}s after the first outcome; "
               f"all done in {r['all_s']:.2f}s; B waited {r['b_s'] / r['all_s']:.3f}x the backlog's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
