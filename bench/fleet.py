"""The same N jobs on a fleet of 1, 2 and 3 hosts of this machine, against a 3-node RabbitMQ
cluster and a 3-node Galera cluster of the bench's own (the fleet tests' harnesses,
``tests/fleet/``): actions/s, and CPU seconds per 1,000 jobs of each daemon, the worker
processes, the brokers (the nodes' ``beam.smp``) and the databases (the nodes' ``mariadbd``:
the writer node, and the two others that apply its write sets).

Each fleet size gets fresh databases, exchange and queues on the same clusters, and its hosts
(``tests/fleet/fleet_hosts.py``: publisher, subscriber, pinger, admin and 2 worker processes
each, the 3-node lists in ``mq.cfg`` and the URLs). After a warm-up of 50 noop jobs per host,
N ``noop`` jobs are submitted in transactions of 500 through the provisioning URL; the clock runs
from the first submit to the last outcome recorded, and CPU is read from ``/proc/<pid>/stat``
(user + system) of every process at both ends, less what the fleet uses at rest (read over
5 s before the jobs, and printed too: the pingers' checks, the brokers' and databases' own
ticking) for as long as the run took. Every process of a host and both clusters are
removed at the end, also on failure.

On one machine (two cores here) the rate cannot grow with hosts: the hosts share the cores
with the brokers and databases. The figures to read are the ratios: each part's CPU per job
relative to the total, and how each moves from 1 to 3 hosts; they say where the CPU of a real
fleet would go. Needs root and the packages of the fleet tests (rabbitmq-server, mariadb-server,
galera-4, rsync).

usage: .venv/bin/python bench/fleet.py [N] [--hosts 1 2 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchFailed, figure

from enstratus_workers.db import NewJob
from tests import servicehome as sh
from tests.fleet import galera_cluster, rabbit_cluster
from tests.fleet.fleet_hosts import cpu_seconds, fleet_names, make_fleet, open_fleet_databases

BATCH = 500
WARM_UP = 50
IDLE_S = 5.0          # the fleet's CPU at rest is read over this long before the jobs
PARTS = ("publisher", "subscriber", "pinger", "admin", "worker", "brokers", "db writer", "db others")


def processes(hosts, rabbit, galera) -> dict[int, str]:
    """Every process to charge, by pid: each host's daemons and workers by role, the nodes."""
    out = {}
    for host in hosts:
        out.update({pid: role for pid, role in host.roles().items() if role in PARTS})
    out.update({n.pid: "brokers" for n in rabbit.nodes if n.pid})
    # every process writes through the first node of the URL (the writer) while it is healthy
    out.update({n.proc.pid: "db writer" if n.index == 0 else "db others" for n in galera.nodes
                if n.proc is not None})
    return out


def cpu_read(pids: dict[int, str]) -> dict[int, float]:
    return {p: s for p, s in ((p, cpu_seconds(p)) for p in pids) if s is not None}


def _by_part(start: dict[int, float], end: dict[int, float], pids: dict[int, str]) -> Counter:
    """CPU seconds each part used between two readings (processes present at both)."""
    used: Counter = Counter()
    for pid, seconds in end.items():
        if pid in start:
            used[pids[pid]] += seconds - start[pid]
    return used


def run_fleet(count: int, jobs: int, rabbit, galera) -> dict:
    """Start ``count`` hosts, warm them up, run ``jobs`` noop jobs; the figures of the run."""
    root = Path(tempfile.mkdtemp(prefix="ewbf-"))   # short: worker sockets live under it
    # the shipped heartbeat interval (the fault test's 1 s would make the pinger's share 10x)
    hosts = make_fleet(root, rabbit, galera, count, fleet_names(), worker_props={"pinger.heartbeat_interval": 10})
    dbs = open_fleet_databases(hosts[0])
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            started = list(pool.map(lambda h: h.start(), hosts))
        if any(r.returncode for r in started):
            raise BenchFailed("a host did not start: " + " | ".join(r.stdout + r.stderr for r in started))
        warm = WARM_UP * count
        dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)] * warm)
        if not sh.wait_until(lambda: dbs.jobs.counts()["succeeded"] == warm, 120, 0.2):
            raise BenchFailed(f"warm-up not done on {count} host(s): {dbs.jobs.counts()}")
        if not sh.wait_until(lambda: all(len([r for r in h.roles().values() if r == "worker"]) >= 2
                                         for h in hosts), 60, 0.2):
            raise BenchFailed("worker processes missing")
        pids = processes(hosts, rabbit, galera)
        rest = cpu_read(pids)
        time.sleep(IDLE_S)
        before = cpu_read(pids)
        idle = _by_part(rest, before, pids)
        began = time.monotonic()
        for first in range(0, jobs, BATCH):
            dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)] * min(BATCH, jobs - first))
        if not sh.wait_until(lambda: dbs.jobs.counts()["succeeded"] == warm + jobs, 600, 0.05):
            raise BenchFailed(f"{jobs} jobs not done on {count} host(s): {dbs.jobs.counts()}")
        seconds = time.monotonic() - began
        busy = _by_part(before, cpu_read(pids), pids)
        # per job: what the run cost beyond the fleet at rest for as long
        return {"hosts": count, "seconds": seconds, "rate": jobs / seconds,
                "idle_per_s": {part: idle[part] / IDLE_S for part in PARTS},
                "per_1000": {part: max(0.0, busy[part] - idle[part] / IDLE_S * seconds) / jobs * 1000
                             for part in PARTS}}
    finally:
        dbs.close()
        for host in hosts:
            sh.kill_strays(host.home)
        shutil.rmtree(root, ignore_errors=True)


def report(results: list[dict]) -> None:
    base = results[0]
    for r in results:
        n = r["hosts"]
        total = sum(r["per_1000"].values())
        figure(f"{n} host(s): actions/s", f"{r['rate']:.0f}/s in {r['seconds']:.1f} s",
               r["rate"], {f"{base['hosts']}host": base["rate"]}, who=f"{n}host")
        figure(f"{n} host(s): CPU s per 1,000 jobs, all parts", f"{total:.2f} s",
               total, {f"{base['hosts']}host": sum(base["per_1000"].values())}, who=f"{n}host")
        for part in PARTS:
            value = r["per_1000"][part]
            figure(f"{n} host(s): CPU s per 1,000 jobs, {part}",
                   f"{value:.3f} s  share={value / total:.1%}" if total else f"{value:.3f} s",
                   value, {f"{base['hosts']}host": base["per_1000"][part]}, who=f"{n}host")
        at_rest = r["idle_per_s"]
        figure(f"{n} host(s): CPU at rest, % of a core", " ".join(
            f"{part}={at_rest[part]:.1%}" for part in PARTS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="?", type=int, default=10000)
    parser.add_argument("--hosts", nargs="+", type=int, default=[1, 2, 3])
    args = parser.parse_args(argv)
    for why in (galera_cluster.missing(), rabbit_cluster.available()):
        if why:
            raise BenchFailed(why)
    print(f"fleet bench: {args.jobs} noop jobs on {args.hosts} host(s); "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    galera = galera_cluster.GaleraCluster.start(size=3)
    try:
        with rabbit_cluster.RabbitCluster.start(size=3) as rabbit:
            results = [run_fleet(n, args.jobs, rabbit, galera) for n in args.hosts]
    finally:
        galera.close()
    report(results)
    print(f"load at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
