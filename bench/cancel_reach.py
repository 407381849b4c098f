"""A cancel made on one host for a job another host runs: how soon the job ends ``cancelled``.

Two hosts of this machine share the bench's database, exchange and queues on RabbitMQ + MariaDB
(``fleet_wait.second_host``): host A runs the workers (its worker type placed on it alone), host
B runs the same daemons with none. One job at a time, a built-in ``sleep`` of 30 s is submitted,
and once it reads ``running``, at a random moment of the next second, it is cancelled, the
three ways in turn:

- ``same host``: by a store of host A, the job's owner's host (its cancel rings host A's
  subscribers directly);
- ``other host``: by a store of host B opened as the CLI and a script's ``cancel()`` open it,
  with no broker connection: the cancel rings host B's publisher, which passes it on through the
  broker to host A's (``wakeup.CANCEL``, ``WakeListener.ring_cancel``);
- ``other host, unrung``: the same store with that ring taken off, as every release before
  this one behaved: host A's subscriber finds the cancel at its once-a-second look.

Per way: cancel -> the row reads ``cancelled`` (the subscriber looked, told the worker, the
action stopped, its outcome was written), p50 and p99, and the other-host ways as ratios to
the same host's in the same run.

usage: .venv/bin/python bench/cancel_reach.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_wait import HOST_A, SEEN_AFTER_S, second_host
from harness import BenchFailed, figure, latency_text, percentile, started_service

from enstratus_workers.jobs.submit import cancel, submit
from tests import servicehome

WAYS = ("same host", "other host", "other host, unrung")
POLL_S = 0.002


def _until(what: str, predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchFailed(f"{what} did not happen within {timeout:g} s")
        time.sleep(POLL_S)


def one_cancel(a, by) -> float:
    """A 30 s ``sleep`` on host A, cancelled by ``by``'s store once running: ms to ``cancelled``."""
    job, _ = submit(a.settings, a.dbs, "sleep", json.dumps({"seconds": 30}))
    _until(f"job {job.job_id} running", lambda: a.dbs.jobs.get(job.job_id).status == "running", 30)
    # at a random moment of the owner's look cycle: the row reads running right after a look
    # (it is that look that marks it), and a cancel made then would always wait a whole cycle
    time.sleep(random.uniform(0, 1))
    t0 = time.perf_counter()
    answer = cancel(by.dbs, job.job_id)
    if answer.verdict != "stopping":
        raise BenchFailed(f"job {job.job_id}: the cancel answered {answer.verdict}, not stopping")
    _until(f"job {job.job_id} cancelled", lambda: a.dbs.jobs.get(job.job_id).status == "cancelled", 30)
    return (time.perf_counter() - t0) * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="cancels each way (after 2 warm-ups each)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 1_000:
        ap.error("-n 1..1000")
    props = {"host.name": HOST_A, "worker.default.placement": f"host:{HOST_A}"}
    samples = {way: [] for way in WAYS}
    scratch = Path(tempfile.mkdtemp(prefix="ewbench-"))
    b = unrung = None
    with started_service(worker_props=props) as a:
        try:
            b = second_host(a, scratch)
            # host B's store once more, its cancels ringing nobody beyond host B: the code before
            unrung = SimpleNamespace(dbs=_unrung_store(b))
            time.sleep(SEEN_AFTER_S)
            for i in range(args.n + 2):
                for way, by in zip(WAYS, (a, b, unrung)):
                    took = one_cancel(a, by)
                    if i >= 2:
                        samples[way].append(took)
        finally:
            if unrung is not None:
                unrung.dbs.close()
            if b is not None:
                b.dbs.close()
                servicehome.init(b.home, "stop", timeout=120)
                servicehome.kill_strays(b.home)
            shutil.rmtree(scratch, ignore_errors=True)
    same50, same99 = percentile(samples[WAYS[0]], 50), percentile(samples[WAYS[0]], 99)
    print("a running 30 s sleep on host A, cancelled from each place in turn: cancel -> the row reads cancelled")
    for way in WAYS:
        figure(f"cancel by {way}", latency_text(samples[way]),
               *((percentile(samples[way], 50), {"same host p50": same50}) if way != WAYS[0] else ()), who="way")
        if way != WAYS[0]:
            figure("  the same, p99", f"{percentile(samples[way], 99):.2f}ms",
                   percentile(samples[way], 99), {"same host p99": same99}, who="way")
    return 0


def _unrung_store(b):
    """Host B's databases opened again, the subscribers' ringer without its ``otherwise`` (the
    ring host B's publisher passes on): a cancel rings host B's own subscribers only."""
    from enstratus_workers.db import open_databases
    from enstratus_workers.jobs import wakeup

    dbs = open_databases(b.settings.worker, b.layout, ensure=False)
    for ringer in dbs.ringers:
        if ringer.role == wakeup.SUBSCRIBER:
            ringer.otherwise(None)
    return dbs


if __name__ == "__main__":
    sys.exit(main())
