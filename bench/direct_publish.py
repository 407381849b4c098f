"""Idle latency, the two ways a job gets published, alternated job by job in one service.

- **relay**: ``submit()`` commits the pending row and rings; a publisher wakes, reads the row
  (locked), publishes it, waits for the confirm and marks it queued (``db/outbox.py``);
- **direct**: ``submit()`` through a store that publishes its own jobs (``jobs/direct.py``: the
  admin daemon's way): the row claimed in the insert's transaction, published from this process
  right after the commit, marked queued.

Each: from just before ``submit()`` to the action's own ``time.time()`` (``bench.stamp``), one
job at a time, the next one submitted once the last is terminal (read once the recorder rang,
so the bench does not query the database while the job is on its way); the two kinds alternated job by
job, so both meet the same machine. With ``--peers``, Celery's and Dramatiq's idle enqueue ->
start beside both, in the same run.

usage: .venv/bin/python bench/direct_publish.py [-n 200] [--gap S] [--peers] [--anchors DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import peers
from harness import BenchFailed, figure, latency_text, percentile, ratios, started_service

from enstratus_workers.jobs.direct import DirectPublisher
from enstratus_workers.db.schema import TERMINAL
from enstratus_workers.jobs import wakeup
from enstratus_workers.jobs.submit import WAIT_SAFETY_NET_S, submit

ACTION, ARGUMENTS = "bench.stamp", "{}"
WARM_UPS = 10


def _started_ms(service, bell, job_id: int, t0: float) -> float:
    # The row is read once the recorder rang (what submit --wait is woken by), not polled every
    # millisecond nor read at once: a read while the job is on its way would load the very
    # path being measured (the database, this process's GIL). A ring of an earlier job only
    # costs one early read; the quarter-second safety net covers a lost ring.
    deadline = time.monotonic() + 60
    while True:
        bell.wait(WAIT_SAFETY_NET_S)
        job = service.dbs.jobs.get(job_id)
        if job is not None and job.status in TERMINAL or time.monotonic() > deadline:
            break
    if job is None or job.status != "succeeded":
        raise BenchFailed(f"job {job_id} ended {job and job.status}: {job and job.error}")
    try:
        return (float(json.loads(job.result)["started"]) - t0) * 1000
    except (TypeError, ValueError, KeyError) as exc:
        raise BenchFailed(f"job {job_id}: no start stamp in its result {job.result!r}") from exc


def _one(service, bell, direct: DirectPublisher | None) -> float:
    service.dbs.jobs.publish_directly(direct)
    t0 = time.time()
    job, _created = submit(service.settings, service.dbs, ACTION, ARGUMENTS)
    return _started_ms(service, bell, job.job_id, t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs of each kind (after 10 warm-ups each)")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between jobs (0: back to back)")
    peers.add_arguments(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 100_000 or not 0 <= args.gap <= 60:
        ap.error("-n 1..100000, --gap 0..60")
    relayed, direct = [], []
    with started_service() as service:
        publisher = DirectPublisher.for_settings(service.settings, service.layout, "bench@direct")
        bell = wakeup.Bell(service.layout.run_dir, f"bench-{os.getpid()}", wakeup.WAITER).announce()
        try:
            for i in range(WARM_UPS + args.n):   # alternated job by job: the same conditions
                d = _one(service, bell, publisher)
                time.sleep(args.gap)
                r = _one(service, bell, None)
                time.sleep(args.gap)
                if i >= WARM_UPS:
                    direct.append(d)
                    relayed.append(r)
        finally:
            bell.close()
            service.dbs.jobs.publish_directly(None)
            publisher.close()
    ceiling_ms = ceiling.latency(args.n)
    ref = {"ceiling": percentile(ceiling_ms, 50)}
    ref99 = {"ceiling": percentile(ceiling_ms, 99)}
    figure("ceiling: raw pika publish->receive", latency_text(ceiling_ms))
    if args.peers and peers.available(args.anchors):
        with peers.Anchors(args.anchors) as anchors:
            for kind in ("celery", "dramatiq"):
                p50, p99 = anchors.latency(kind, args.n)
                ref[kind], ref99[kind] = p50, p99
                figure(f"peer {kind}: enqueue->task start", f"p50={p50:.2f}ms p99={p99:.2f}ms n={args.n}")
    elif args.peers:
        print(peers.absent_line(args.anchors))
    ref["relay"], ref99["relay"] = percentile(relayed, 50), percentile(relayed, 99)
    where = f"gap {args.gap:g}s" if args.gap else "back to back"
    for label, samples in ((f"relay: submit() -> action start, {where}", relayed),
                           (f"direct: submit() -> action start, {where}", direct)):
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        figure(label, f"{latency_text(samples)}  p50 {ratios(p50, ref)}  p99 {ratios(p99, ref99)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
