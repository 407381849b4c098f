"""Idle latency, the two ways a job gets published, alternated job by job in one service.

- **relay**: ``submit()`` commits the pending row and rings; a publisher wakes, reads the row
  (locked), publishes it, waits for the confirm and marks it queued (``db/outbox.py``);
- **direct**: ``submit()`` through a store that publishes its own jobs (``jobs/direct.py``: the
  admin daemon's way): the row claimed in the insert's transaction, published from this process
  right after the commit, marked queued.

Each: from just before ``submit()`` to the action's own ``time.time()`` (``bench.stamp``), one
job at a time, the next one submitted once the last is terminal (``wait_for``: woken by the
recorder, so the bench does not query the database while the job is on its way); the two kinds alternated job by
job, so both meet the same machine. With ``--peers``, Celery's and Dramatiq's idle enqueue ->
start beside both, in the same run.

usage: .venv/bin/python bench/direct_publish.py [-n 200] [--peers] [--anchors DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import peers
from harness import BenchFailed, figure, latency_text, percentile, ratios, started_service

from enstratus_workers.jobs.direct import DirectPublisher
from enstratus_workers.jobs.submit import submit, wait_for

ACTION, ARGUMENTS = "bench.stamp", "{}"
WARM_UPS = 10


def _started_ms(service, job_id: int, t0: float) -> float:
    # woken by the recorder's bell (what submit --wait uses), not by polling the row every
    # millisecond: a poll's query would load the very path being measured, in this process
    job = wait_for(service.dbs, job_id, 60, run_dir=service.layout.run_dir)
    if job is None or job.status != "succeeded":
        raise BenchFailed(f"job {job_id} ended {job and job.status}: {job and job.error}")
    try:
        return (float(json.loads(job.result)["started"]) - t0) * 1000
    except (TypeError, ValueError, KeyError) as exc:
        raise BenchFailed(f"job {job_id}: no start stamp in its result {job.result!r}") from exc


def _one(service, direct: DirectPublisher | None) -> float:
    service.dbs.jobs.publish_directly(direct)
    t0 = time.time()
    job, _created = submit(service.settings, service.dbs, ACTION, ARGUMENTS)
    return _started_ms(service, job.job_id, t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs of each kind (after 10 warm-ups each)")
    peers.add_arguments(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 100_000:
        ap.error("-n 1..100000")
    relayed, direct = [], []
    with started_service() as service:
        publisher = DirectPublisher.for_settings(service.settings, service.layout, "bench@direct")
        try:
            for i in range(WARM_UPS + args.n):   # alternated job by job: the same conditions
                d, r = _one(service, publisher), _one(service, None)
                if i >= WARM_UPS:
                    direct.append(d)
                    relayed.append(r)
        finally:
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
    for label, samples in (("relay: submit() -> action start", relayed),
                           ("direct: submit() -> action start", direct)):
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        figure(label, f"{latency_text(samples)}  p50 {ratios(p50, ref)}  p99 {ratios(p99, ref99)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
