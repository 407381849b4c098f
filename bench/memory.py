"""Memory of a started service, process by process: RSS and PSS (psutil ``memory_full_info()``).

The service and its KM are started with their init scripts in a scratch install root on
RabbitMQ + MariaDB. Every process with a pid file there (publisher, subscriber, pinger, admin,
KM, and each worker process) is read idle, then again after 200 jobs: a ``server.launch`` and a
``server.terminate`` on the local cloud (its servers are guest-agent processes on 127.0.0.1, no
network: the credential is put into the scratch KM as an operator would) and noop jobs for the
rest. PSS (proportional set size) charges shared pages to each sharer in part, so the PSS of the
processes adds up to what the service really costs; RSS counts shared pages in every process.

With ``--peers``, a Celery prefork worker (``-c 2``, from the anchors' venv, as ``anchors.sh``
starts it) is read the same way, idle and after 200 tasks, and each of our worker processes is
given as a ratio to a Celery pool child (the process that runs the tasks, as ours does).

usage: .venv/bin/python bench/memory.py [--jobs 200] [--peers] [--anchors DIR]
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
import psutil
from harness import BenchFailed, figure, started_service, wait_succeeded, wait_terminal

from enstratus_workers.db import NewJob
from enstratus_workers.jobs.submit import submit
from tests import servicehome

MIB = 1024 * 1024
ACCOUNT = "ewbench-memory"
STATE_DIR = "services/worker/data/local-cloud-ewbench"


def usage(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return info.rss / MIB, info.pss / MIB


def service_processes(home: Path) -> dict[str, int]:
    """``daemon@name`` -> pid for every live process with a pid file under the install root."""
    found = {}
    for pid_file in sorted(home.glob("services/*/run/*.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if psutil.pid_exists(pid):
            found[pid_file.stem] = pid
    return found


def snapshot(processes: dict[str, int]) -> dict[str, tuple[float, float]]:
    return {name: usage(pid) for name, pid in processes.items()}


def put_local_cloud(home: Path) -> None:
    with servicehome.km_client(home) as km:
        km.put(ACCOUNT, "cloud", "local-secret-" + secrets.token_urlsafe(16),
               metadata={"provider": "local", "key": "ewbench-key", "state_dir": STATE_DIR})


def run_jobs(service, n: int) -> None:
    """One server launched and terminated on the local cloud, noop jobs for the rest."""
    launched, _ = submit(service.settings, service.dbs, "server.launch",
                         {"account": ACCOUNT, "image": "local-agent", "size": "small", "name": "ewbench"})
    job, _seen = wait_terminal(service.dbs, launched.job_id, timeout=120, poll=0.05)
    server_id = job.as_dict()["result"]["server_id"]
    base = service.dbs.jobs.counts()["succeeded"]
    noops = max(0, n - 2)
    service.dbs.jobs.submit_many([NewJob("noop", "{}", service.settings.worker.default_queue, 1)] * noops)
    wait_succeeded(service.dbs, base + noops)
    terminated, _ = submit(service.settings, service.dbs, "server.terminate", {"server_id": server_id})
    wait_terminal(service.dbs, terminated.job_id, timeout=120, poll=0.05)


def measure_service(jobs: int) -> tuple[dict, dict]:
    with started_service(km=True, warm_up=0) as service:
        put_local_cloud(service.home)
        service.warm_up(1)   # every worker process up
        processes = service_processes(service.home)
        idle = snapshot(processes)
        run_jobs(service, jobs)
        gone = [name for name, pid in processes.items() if not psutil.pid_exists(pid)]
        if gone:
            raise BenchFailed(f"processes ended while the jobs ran: {gone}")
        return idle, snapshot(processes)


def measure_celery(anchors, jobs: int) -> tuple[dict, dict]:
    """The Celery main process and its pool children, idle and after ``jobs`` tasks."""
    with anchors.worker("celery") as proc:
        main = psutil.Process(proc.pid)
        members = {"celery main": main.pid}
        members.update({f"celery child {k + 1}": c.pid for k, c in enumerate(main.children())})
        if len(members) < 2:
            raise BenchFailed("the Celery worker has no pool children")
        idle = snapshot(members)
        anchors.run("drive.py", "celery", jobs)
        return idle, snapshot(members)


def report(when: str, ours: dict, celery: dict | None) -> None:
    child = None
    if celery:
        children = [v for k, v in celery.items() if "child" in k]
        child = (sum(r for r, _ in children) / len(children), sum(p for _, p in children) / len(children))
        for name, (rss, pss) in celery.items():
            figure(f"peer {name}, {when}", f"rss={rss:.1f}MiB pss={pss:.1f}MiB")
    for name, (rss, pss) in ours.items():
        tail = ""
        if child and name.startswith("worker@"):
            tail = f"  rss ours/celery_child={rss / child[0]:.3g}x pss ours/celery_child={pss / child[1]:.3g}x"
        figure(f"{name}, {when}", f"rss={rss:.1f}MiB pss={pss:.1f}MiB{tail}")
    total_pss = sum(p for _, p in ours.values())
    tail = f"  ours/celery={total_pss / sum(p for _, p in celery.values()):.3g}x" if celery else ""
    figure(f"whole service ({len(ours)} processes, KM and admin included), {when}", f"pss={total_pss:.1f}MiB{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs run before the second reading (at least 2)")
    peers.add_arguments(ap, "also a Celery prefork worker (needs the anchors)")
    args = ap.parse_args(argv)
    if not 2 <= args.jobs <= 100_000:
        ap.error("--jobs 2..100000")
    idle, busy = measure_service(args.jobs)
    celery_idle = celery_busy = None
    anchors = peers.opened(args)
    if anchors is not None:
        with anchors:
            celery_idle, celery_busy = measure_celery(anchors, args.jobs)
    report("idle", idle, celery_idle)
    report(f"after {args.jobs} jobs", busy, celery_busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
