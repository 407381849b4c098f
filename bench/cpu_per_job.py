"""What a job costs the service in CPU: a figure that a loaded machine does not scramble.

On a shared machine the bulk rate swings with everyone else's load (``throughput.py`` saw the
same code at 0.5-2x from one run to the next), and so does the ceiling measured beside it. The
CPU time the service's own processes spend per job moves far less: it is what the job's path
costs, whoever else runs. The service is started as ``throughput.py`` starts it; N ``noop`` jobs
are stored in batches of 500 (``submit_jobs``, as the bulk path stores them) and run; then the
user + system CPU time each daemon (publisher, subscriber, the worker processes) spent from the
first submit to the last outcome, per 1,000 jobs. The broker's and MariaDB's CPU are not
counted: other users share them here. ``--rounds`` repeats it in one service.

``--api``: the one-at-a-time path instead: one ``POST /jobs`` per job from 8 keep-alive clients
(``throughput.py --single``'s clients), and the admin daemon's CPU beside the others' (with the
8 requests that open the connections, outside the clock).

usage: .venv/bin/python bench/cpu_per_job.py [N] [--rounds R] [--api]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import figure, started_service, wait_succeeded
from throughput import admin_one_by_one

from enstratus_workers.db import NewJob

BATCH = 500
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _daemons(run_dir: Path, kinds: tuple[str, ...]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for kind in kinds:
        for f in run_dir.glob(f"{kind}@*.pid"):
            try:
                out.setdefault(kind, []).append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
    return out


def one_round(service, n: int, api: bool = False) -> None:
    pids = _daemons(service.run_dir, ("publisher", "subscriber", "worker") + (("admin",) if api else ()))
    before = {k: sum(_cpu_s(p) for p in ps) for k, ps in pids.items()}
    if api:
        took = admin_one_by_one(service, n)[0]
    else:
        done = service.dbs.jobs.counts()["succeeded"]
        queue = service.settings.worker.default_queue
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            service.dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 1)] * min(BATCH, n - i))
        took = wait_succeeded(service.dbs, done + n, timeout=900) - t0
    spent = {k: sum(_cpu_s(p) for p in ps) - before[k] for k, ps in pids.items()}
    total = sum(spent.values())
    parts = " ".join(f"{k}={v / n * 1e6:.0f}" for k, v in sorted(spent.items()))
    figure(f"{n} noop jobs{', one POST /jobs each' if api else ''} (load {os.getloadavg()[0]:.1f})",
           f"CPU ms per 1,000 jobs: all={total / n * 1e6:.0f} {parts}  ({n / took:,.0f}/s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--api", action="store_true", help="one POST /jobs per job from 8 clients, not bulk")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 1_000_000 or not 1 <= args.rounds <= 20:
        ap.error("N 1..1000000, --rounds 1..20")
    with started_service() as service:
        for _ in range(args.rounds):
            one_round(service, args.n, args.api)
    return 0


if __name__ == "__main__":
    sys.exit(main())
