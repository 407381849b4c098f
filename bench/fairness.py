"""Fair shares on RabbitMQ + MariaDB: how long an account that comes later waits behind another's backlog.

``--backlog`` (10,000) no-op jobs of account A are stored at once (one transaction, as the bulk
API stores a list); once ``--after`` (1,000) of them have finished, ``--late`` (20) jobs of
account B are stored. For each window measured (the shipped ``publisher.window``, and one as
large as the backlog: as good as none, the relay as it was before fair shares), in a service of
its own: how many jobs of A finished between B's submit and B's last outcome, and how long B
waited, beside the time the rest of A's backlog took. Without a window the whole backlog is on
the broker by the time B comes, and B waits behind all of it; with one, behind about a window.

usage: .venv/bin/python bench/fairness.py [--backlog 10000] [--after 1000] [--late 20] [--window N ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from harness import figure, started_service, wait_succeeded

from enstratus_workers.clock import now_ms
from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.db import NewJob


def _last_id(dbs) -> int:
    with dbs.provisioning.connect() as conn:
        return conn.execute(sa.text("SELECT COALESCE(MAX(job_id), 0) FROM enstratus_job")).scalar()


def _jobs(queue: str, account: str, n: int) -> list:
    """``n`` no-op jobs of ``account`` (told apart by their ids, so that the release before
    accounts, which has no such field, can be measured with this script too)."""
    kw = {"account": account} if "account" in NewJob.__dataclass_fields__ else {}
    return [NewJob("noop", "{}", queue, 1, **kw)] * n


def run(backlog: int, after: int, late: int, window: int | None) -> dict:
    props = {"publisher.window": window} if window is not None else None   # None: a release before windows
    with started_service(worker_props=props) as service:
        dbs, queue = service.dbs, service.settings.worker.default_queue
        base, first_a = dbs.jobs.counts()["succeeded"], _last_id(dbs)
        dbs.jobs.submit_many(_jobs(queue, "A", backlog))
        first_b = _last_id(dbs)
        wait_succeeded(dbs, base + after, timeout=600)
        late_ms = now_ms()
        dbs.jobs.submit_many(_jobs(queue, "B", late))
        wait_succeeded(dbs, base + backlog + late, timeout=600)
        with dbs.provisioning.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT job_id > :b AS is_b, end_timestamp FROM enstratus_job WHERE job_id > :a"),
                {"a": first_a, "b": first_b}).all()
    b_last = max(r.end_timestamp for r in rows if r.is_b)
    a_ends = [r.end_timestamp for r in rows if not r.is_b]
    return {"done_before": sum(1 for t in a_ends if t <= late_ms),
            "ahead": sum(1 for t in a_ends if late_ms < t <= b_last),
            "b_s": (b_last - late_ms) / 1000, "rest_s": (max(a_ends) - late_ms) / 1000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=10000, help="jobs of account A, stored at once")
    ap.add_argument("--after", type=int, default=1000, help="B comes once this many of A's have finished")
    ap.add_argument("--late", type=int, default=20, help="jobs of account B")
    ap.add_argument("--window", type=int, action="append", default=[],
                    help="windows to measure (default: the shipped one, and one as large as the backlog)")
    args = ap.parse_args(argv)
    if not (1 <= args.backlog <= 1_000_000 and 0 <= args.after < args.backlog and 1 <= args.late <= 100_000):
        ap.error("--backlog must be 1..1000000, --after below it, --late 1..100000")
    shipped = getattr(WorkerSettings(), "publisher_window", None)   # None: the release before windows
    windows = args.window or ([shipped, args.backlog + args.late] if shipped else [None])
    for window in windows:
        r = run(args.backlog, args.after, args.late, window)
        label = f"publisher.window={window}" if window is not None else "no window (release before)"
        figure(f"{label}: B's {args.late} after {r['done_before']} of A's",
               f"done {r['b_s']:.2f}s after B's submit, behind {r['ahead']} more of A's; the rest of "
               f"A's backlog took {r['rest_s']:.2f}s: B waited {r['b_s'] / r['rest_s']:.3f}x of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
