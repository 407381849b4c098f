"""A what-if, not the service's path: idle latency if the submitter published its job itself.

Issue 10 asks for idle latency near Celery's. The shipped path crosses six processes: the
submitter commits the pending row and rings; the publisher reads the row (locked), publishes it
and marks it queued; RabbitMQ delivers to the subscriber, which checks the row and hands the job
to a worker. The change in question is the submitter publishing right after its commit, with
the publisher's relay kept as the safety net for a submitter that died in between (which needs
a claim on the row). This script measured what that would buy before anyone built it, in one
service, job by job alternated. It was then built (1a83fa5..0df437f) and reverted (0f66c7f):
with the claim's read, the queued mark and a client that does not poll, it bought 0.85x back to
back and cost 1.75-1.91x with one job every 0.5 s (bench/README.md, "Direct publishing, built
and reverted"), where what this what-if left out is listed. The two kinds it compares:

- **shipped**: ``submit()`` (the row committed pending, the publisher rung);
- **direct**: the row committed ``queued`` through the same engine, then published from this
  process through the service's own transport (``mq.open_transport``: the publisher's code,
  confirms on), as a submitter would; the subscriber's row check and the outcome's write are
  the shipped ones.

Each: from just before the commit to the action's own ``time.time()`` (``bench.stamp``), one job
at a time, the next one submitted once the last is terminal. The rows are written with no
``claimed`` state, so this must never be used against a service in production: its publisher
cannot tell a direct job whose publish failed. With ``--peers``, Celery's and Dramatiq's idle
enqueue -> start beside both, in the same run.

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
from harness import BenchFailed, figure, latency_text, percentile, ratios, started_service, wait_terminal

from enstratus_workers.clock import now_ms
from enstratus_workers.db import schema
from enstratus_workers.jobs.messages import encode_job
from enstratus_workers.jobs.submit import submit
from enstratus_workers.mq import open_transport
from enstratus_workers.mq.base import OutgoingMessage

ACTION, ARGUMENTS, MAX_ATTEMPTS = "bench.stamp", "{}", 3
WARM_UPS = 10


def _started_ms(dbs, job_id: int, t0: float) -> float:
    job, _seen = wait_terminal(dbs, job_id)
    try:
        return (float(json.loads(job.result)["started"]) - t0) * 1000
    except (TypeError, ValueError, KeyError) as exc:
        raise BenchFailed(f"job {job_id}: no start stamp in its result {job.result!r}") from exc


def _shipped(service) -> float:
    t0 = time.time()
    job, _created = submit(service.settings, service.dbs, ACTION, ARGUMENTS)
    return _started_ms(service.dbs, job.job_id, t0)


def _direct(service, transport, queue: str) -> float:
    t0 = time.time()
    with service.dbs.jobs.engine.begin() as conn:
        stamp = now_ms()
        job_id = int(conn.execute(schema.jobs.insert().values(
            action=ACTION, arguments=ARGUMENTS, queue=queue, status=schema.QUEUED, attempts=0,
            max_attempts=MAX_ATTEMPTS, created_timestamp=stamp, queued_timestamp=stamp)).inserted_primary_key[0])
    transport.publish([OutgoingMessage(queue=queue, message_id=str(job_id),
                                       body=encode_job(job_id, ACTION, ARGUMENTS, 1, MAX_ATTEMPTS))])
    return _started_ms(service.dbs, job_id, t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs of each kind (after 10 warm-ups each)")
    peers.add_arguments(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 100_000:
        ap.error("-n 1..100000")
    shipped, direct = [], []
    with started_service() as service:
        queue = service.settings.worker.default_queue
        transport = open_transport(service.settings.mq, service.layout, client_name="bench@direct")
        try:
            transport.declare([queue])
            for i in range(WARM_UPS + args.n):   # alternated job by job: the same conditions
                d, s = _direct(service, transport, queue), _shipped(service)
                if i >= WARM_UPS:
                    direct.append(d)
                    shipped.append(s)
        finally:
            transport.close()
    ceiling_ms = ceiling.latency(args.n)
    ref = {"ceiling": percentile(ceiling_ms, 50)}
    ref99 = {"ceiling": percentile(ceiling_ms, 99)}
    figure("ceiling: raw pika publish->receive", latency_text(ceiling_ms))
    anchors = peers.opened(args)
    if anchors is not None:
        with anchors:
            for kind in ("celery", "dramatiq"):
                p50, p99 = anchors.latency(kind, args.n)
                ref[kind], ref99[kind] = p50, p99
                figure(f"peer {kind}: enqueue->task start", f"p50={p50:.2f}ms p99={p99:.2f}ms n={args.n}")
    ref["shipped"], ref99["shipped"] = percentile(shipped, 50), percentile(shipped, 99)
    for label, samples in (("shipped: submit() -> action start", shipped),
                           ("direct (what-if): commit, publish -> action start", direct)):
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        figure(label, f"{latency_text(samples)}  p50 {ratios(p50, ref)}  p99 {ratios(p99, ref99)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
