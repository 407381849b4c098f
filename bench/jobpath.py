"""Where a job's milliseconds go: the stamps of ``jobs/pathtrace.py`` along each job's path.

The service is started (as ``latency.py`` does) with ``ENSTRATUS_PATH_TRACE`` set, so every
daemon stamps each job at each stage of its path (submit -> publisher read -> confirmed ->
marked queued -> intake received -> row checked -> sent to a worker -> action start -> end ->
outcome back -> outcome written -> event written -> ack handed over). Then:

- **idle**: N jobs of ``bench.stamp`` one at a time, through ``submit()`` (each waits for the one
  before to be acked), optionally ``--gap`` seconds apart;
- **bulk** (``--bulk N``): N ``noop`` jobs stored in batches of 500 (``submit_many``), as
  ``throughput.py`` stores them.

For each, the time from each stage to the next, p50 and p99 over the jobs, and each stage's
time since the submit: which hop costs what, at idle and under load. The publisher's wake-ups
(``publisher.woken``, not tied to a job) are matched at idle with the job whose submit came
just before. Stamps come from one clock (one machine), in microseconds.

usage: .venv/bin/python bench/jobpath.py [-n 200] [--gap S] [--bulk N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import figure, percentile, started_service, wait_succeeded, wait_terminal

from enstratus_workers.db import NewJob
from enstratus_workers.jobs import pathtrace
from enstratus_workers.jobs.submit import submit

STAGES = ["client.submit", "client.returned", "publisher.woken", "publisher.read", "publisher.confirmed",
          "publisher.marked", "intake.received", "subscriber.taken", "subscriber.checked",
          "subscriber.sent", "worker.start", "worker.end", "subscriber.outcome", "recorder.written",
          "recorder.event", "recorder.acked"]
BULK_BATCH = 500


def idle(service, n: int, gap: float) -> list[int]:
    ids = []
    for _ in range(n):
        t0 = time.time_ns()
        job, _ = submit(service.settings, service.dbs, "bench.stamp", "{}")
        t1 = time.time_ns()
        _client(job.job_id, t0, t1)
        wait_terminal(service.dbs, job.job_id)
        ids.append(job.job_id)
        if gap:
            time.sleep(gap)
    _wait_acked(ids)
    return ids


_CLIENT: dict[int, dict[str, int]] = {}


def _client(job_id: int, t0: int, t1: int) -> None:
    _CLIENT[job_id] = {"client.submit": t0, "client.returned": t1}


def bulk(service, n: int) -> list[int]:
    queue = service.settings.worker.default_queue
    before = service.dbs.jobs.counts()["succeeded"]
    first = None
    for i in range(0, n, BULK_BATCH):
        size = min(BULK_BATCH, n - i)
        t0 = time.time_ns()
        jobs = service.dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 1)] * size)
        t1 = time.time_ns()
        for j in jobs:
            _client(j.job_id, t0, t1)
        first = first or t0
    wait_succeeded(service.dbs, before + n, timeout=600)
    took = (time.time_ns() - first) / 1e9
    figure(f"bulk {n} jobs, first submit -> last outcome", f"{took:.2f}s = {n / took:,.0f}/s (traced)")
    return [j for j in _CLIENT if j not in _IDLE_IDS]


_IDLE_IDS: set[int] = set()
TRACE_DIR = Path()


def _wait_acked(ids, timeout: float = 10) -> None:
    """The ack stamp comes just after the outcome is visible: wait for the last one's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "recorder.acked" in pathtrace.read(TRACE_DIR).get(ids[-1], {}):
            return
        time.sleep(0.01)


def report(title: str, ids: list[int], wakes: list[int] | None = None) -> None:
    stamps = pathtrace.read(TRACE_DIR)
    rows = []
    for i in ids:
        s = dict(stamps.get(i, {}))
        s.update(_CLIENT.get(i, {}))
        if wakes is not None:   # idle: the first wake-up after this job's submit
            t0 = s.get("client.submit")
            after = [w for w in wakes if t0 is not None and w >= t0 and w <= s.get("publisher.read", 0)]
            if after:
                s["publisher.woken"] = after[0]
        rows.append(s)
    print(f"-- {title}: {len(rows)} jobs; per hop p50 / p99 in ms (hop: from the stage before it)")
    seen = [st for st in STAGES if sum(1 for r in rows if st in r) >= len(rows) // 2]
    for prev, cur in zip(seen, seen[1:]):
        hop = [(r[cur] - r[prev]) / 1e6 for r in rows if cur in r and prev in r]
        since = [(r[cur] - r["client.submit"]) / 1e6 for r in rows if cur in r and "client.submit" in r]
        if hop:
            figure(f"  {prev} -> {cur}",
                   f"hop p50={percentile(hop, 50):8.3f} p99={percentile(hop, 99):8.3f}   "
                   f"since submit p50={percentile(since, 50):8.3f} p99={percentile(since, 99):8.3f}")


def _wake_ups(ids: list[int], wakes: list[int]) -> None:
    """The publisher's wake-ups per idle job (each one a relay pass): one is the job's own ring;
    more are passes for nothing (rings of room, jobs started or finished, with none waiting)."""
    first = _CLIENT.get(ids[0], {}).get("client.submit")
    last = _CLIENT.get(ids[-1], {}).get("client.returned")
    if first is None or last is None:
        return
    during = sum(1 for w in wakes if first <= w <= last)
    figure("  publisher wake-ups per idle job", f"{during / len(ids):.2f} ({during} for {len(ids)} jobs)")


def main(argv=None) -> int:
    global TRACE_DIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="idle jobs, one at a time (0: none)")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between idle jobs")
    ap.add_argument("--bulk", type=int, default=0, help="also N noop jobs in batches of 500")
    args = ap.parse_args(argv)
    if not 0 <= args.n <= 100_000 or not 0 <= args.bulk <= 1_000_000 or not 0 <= args.gap <= 60:
        ap.error("-n 0..100000, --bulk 0..1000000, --gap 0..60")
    TRACE_DIR = Path(tempfile.mkdtemp(prefix="ewbench-trace-"))
    os.environ[pathtrace.ENV] = str(TRACE_DIR)
    try:
        with started_service() as service:
            load = os.getloadavg()[0]
            if args.n:
                for _ in range(5):   # warm-ups, not reported
                    job, _c = submit(service.settings, service.dbs, "bench.stamp", "{}")
                    wait_terminal(service.dbs, job.job_id)
                ids = idle(service, args.n, args.gap)
                _IDLE_IDS.update(ids)
                wakes = sorted(t for k, t in pathtrace.read(TRACE_DIR).get(0, {}).items()
                               if k.startswith("publisher.woken"))
                report(f"idle, one at a time, gap {args.gap:g}s (load {load:.1f})", ids, wakes)
                _wake_ups(ids, wakes)
            if args.bulk:
                ids = bulk(service, args.bulk)
                time.sleep(0.5)   # the last acks' stamps
                report(f"bulk {args.bulk} (load {os.getloadavg()[0]:.1f})", ids)
    finally:
        os.environ.pop(pathtrace.ENV, None)
        shutil.rmtree(TRACE_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
