"""A wait on one host for a job another host carries out: ``submit --wait`` in a fleet.

Two hosts of this machine share the bench's database, exchange and queues on RabbitMQ +
MariaDB: host A (``started_service``, the whole service) runs the workers, its worker type
placed on it alone (``worker.default.placement = host:host-a``); host B is a second install root
started with the same init script, whose subscriber therefore carries out nothing. One job at a
time (after 5 warm-ups per host), a ``bench.stamp`` job is submitted and waited for as
``submit --wait`` does (``latency.one_job``: its bell announced before the submit, then
``wait_for``), alternately from host A (the outcome is recorded on the waiter's own host: its
recorder rings the wait) and from host B (recorded on another host), back to back and, with
``--gap``, that long apart. Per host: submit -> ``wait_for()`` returned, p50 and p99, and B's
figures as ratios to A's of the same run.

Without a ring through the broker, B's wait ends at its ``WAIT_SAFETY_NET_S`` read of the row
(``jobs/submit.py``): a wait announced before its submit reads first after that interval.

usage: .venv/bin/python bench/fleet_wait.py [-n 100] [--gap SECONDS]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency
from harness import SHIPPED_PROPS, BenchFailed, _working_directory, figure, latency_text, percentile, started_service

from enstratus_workers.config import load_settings
from enstratus_workers.db import open_databases
from enstratus_workers.layout import Layout
from tests import servicehome

HOST_A, HOST_B = "host-a", "host-b"
#: a ringer looks for other hosts' publishers this often (``mq/amqp_wake.OTHERS_TTL_S``, 5 s):
#: host B's publisher is rung through the broker only once host A's ringers have seen it
SEEN_AFTER_S = 7.0


def second_host(service, scratch: Path):
    """Host B: an install root on the same database, exchange and queues as ``service``,
    started with the init script; its settings, layout and open databases."""
    amqp = {"exchange": service.settings.mq.exchange, "queue_prefix": service.settings.mq.queue_prefix}
    home = servicehome.make_home(scratch, amqp=amqp, mysql_url=service.settings.worker.provisioning_url.reveal(),
                                 worker_props={**SHIPPED_PROPS, "host.name": HOST_B})
    layout = Layout(home)
    with _working_directory(scratch):
        started = servicehome.init(home, "start", timeout=120)
    if started.returncode != 0:
        raise BenchFailed(f"host B did not start: {started.stdout}{started.stderr}")
    settings = load_settings(layout)
    return SimpleNamespace(home=home, layout=layout, settings=settings,
                           dbs=open_databases(settings.worker, layout, ensure=False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="jobs waited for from each host (after 5 warm-ups each)")
    ap.add_argument("--gap", type=float, default=0.0, help="pause after each pair of jobs (default 0)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 10_000 or not 0 <= args.gap <= 60:
        ap.error("-n 1..10000, --gap 0..60")
    props = {"host.name": HOST_A, "worker.default.placement": f"host:{HOST_A}"}
    samples = {HOST_A: [], HOST_B: []}
    owners = set()
    scratch = Path(tempfile.mkdtemp(prefix="ewbench-"))
    b = None
    with started_service(worker_props=props) as a:
        try:
            b = second_host(a, scratch)
            time.sleep(SEEN_AFTER_S)
            for i in range(args.n + latency.WARM_UP):
                for host, side in ((HOST_A, a), (HOST_B, b)):
                    t0 = time.perf_counter()
                    latency.one_job(side, use_wait_for=True)
                    took = (time.perf_counter() - t0) * 1000
                    if i >= latency.WARM_UP:
                        samples[host].append(took)
                time.sleep(args.gap)
            with a.dbs.jobs.engine.connect() as conn:
                owners = {o for (o,) in conn.exec_driver_sql(
                    "SELECT DISTINCT owner FROM enstratus_job WHERE owner IS NOT NULL").all()}
        finally:
            if b is not None:
                b.dbs.close()
                servicehome.init(b.home, "stop", timeout=120)
                servicehome.kill_strays(b.home)
            shutil.rmtree(scratch, ignore_errors=True)
    if any(HOST_B in o for o in owners):
        raise BenchFailed(f"host B carried out jobs (owners {sorted(owners)}): the placement did not hold")
    a50, a99 = percentile(samples[HOST_A], 50), percentile(samples[HOST_A], 99)
    print(f"jobs {'back to back' if not args.gap else f'{args.gap:g} s apart'}, alternating host A and host B")
    figure("wait on host A, recorded on host A: submit->wait_for()", latency_text(samples[HOST_A]))
    figure("wait on host B, recorded on host A: submit->wait_for()", latency_text(samples[HOST_B]),
           percentile(samples[HOST_B], 50), {"same host p50": a50}, who="B")
    figure("  the same, p99", f"{percentile(samples[HOST_B], 99):.2f}ms",
           percentile(samples[HOST_B], 99), {"same host p99": a99}, who="B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
