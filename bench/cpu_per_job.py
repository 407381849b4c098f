"""What a job costs the service in CPU: a figure that a loaded machine does not scramble.

On a shared machine the bulk rate swings with everyone else's load (``throughput.py`` saw the
same code at 0.5-2x from one run to the next), and so does the ceiling measured beside it. The
CPU time the service's own processes spend per job moves far less: it is what the job's path
costs, whoever else runs. The service is started as ``throughput.py`` starts it; N ``noop`` jobs
are stored in batches of 500 (``submit_jobs``, as the bulk path stores them) and run; then the
user + system CPU time each daemon (publisher, subscriber, the worker processes) spent from the
first submit to the last outcome, per 1,000 jobs, beside this client's, MariaDB's (``mariadbd``)
and RabbitMQ's (``beam.smp``): theirs is the service's own only while nothing else uses those
servers, so run it on a quiet machine. Also the database statements per job (MariaDB's global
``Questions``). ``--rounds`` repeats it in one service.

``--api``: the one-at-a-time path instead: one ``POST /jobs`` per job from 8 keep-alive clients
(``throughput.py --single``'s clients), and the admin daemon's CPU beside the others' (with the
8 requests that open the connections, outside the clock). With ``--peers``, Celery's one
``.delay()`` per task before each round, counted the same way: its worker and pool, RabbitMQ,
and its client (``drive.py``). On two cores that every process shares, what a path spends per
job bounds its rate: the two totals say how far apart the two paths' rates can be.

``--idle``: N jobs one at a time, as ``latency.py`` runs them back to back (``submit()``, then
``wait_for()`` with its bell announced before the submit, as ``submit --wait`` does), and per job
what each process spent, which the machine's speed does not move as it moves a latency: CPU ms
(the daemons, this client, and the shared servers: MariaDB's ``mariadbd`` and RabbitMQ's
``beam.smp``, whose CPU here is the service's alone while nothing else runs), wake-ups (voluntary
context switches, every thread of each process: each a thread put back on a core, on two cores
often behind another) and database statements (MariaDB's ``Questions``, global). At idle the two
cores are shared by every process on a job's way: what any of them spends, on the way or beside
it, is a core the next hop may wait for.

usage: .venv/bin/python bench/cpu_per_job.py [N] [--rounds R] [--api [--peers] | --idle]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from harness import figure, started_service, wait_succeeded
from throughput import admin_one_by_one

from enstratus_workers.db import NewJob
from enstratus_workers.jobs.submit import outcome_bell, submit, wait_for

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


def _counted(service, daemons: tuple[str, ...]) -> dict[str, list[int]]:
    """The processes a round counts, by part: the daemons, MariaDB and RabbitMQ, this client."""
    pids = _daemons(service.run_dir, daemons)
    pids.update(_servers())
    pids["client"] = [os.getpid()]
    return pids


def _cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each part's processes."""
    return {k: sum(_cpu_s(p) for p in ps) for k, ps in pids.items()}


def one_round(service, n: int, api: bool = False) -> None:
    pids = _counted(service, ("publisher", "subscriber", "worker") + (("admin",) if api else ()))
    before = _cpu_of(pids)
    statements0 = _statements(service)
    if api:
        took = admin_one_by_one(service, n)[0]
    else:
        done = service.dbs.jobs.counts()["succeeded"]
        queue = service.settings.worker.default_queue
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            service.dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 1)] * min(BATCH, n - i))
        took = wait_succeeded(service.dbs, done + n, timeout=900) - t0
    statements = _statements(service) - statements0 - 1
    spent = {k: v - before[k] for k, v in _cpu_of(pids).items()}
    total = sum(spent.values())
    parts = " ".join(f"{k}={v / n * 1e6:.0f}" for k, v in spent.items())
    figure(f"{n} noop jobs{', one POST /jobs each' if api else ''} (load {os.getloadavg()[0]:.1f})",
           f"CPU ms per 1,000 jobs: all={total / n * 1e6:.0f} {parts}  ({n / took:,.0f}/s; "
           f"{statements / n:.2f} statements per job)")


def _servers() -> dict[str, list[int]]:
    """The shared servers' pids: MariaDB and RabbitMQ (empty where they are not found)."""
    out: dict[str, list[int]] = {"mariadb": [], "rabbitmq": []}
    for p in psutil.process_iter(["name"]):
        kind = {"mariadbd": "mariadb", "mysqld": "mariadb", "beam.smp": "rabbitmq"}.get(p.info["name"] or "")
        if kind:
            out[kind].append(p.pid)
    return out


def _wake_ups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far (0 if it is gone)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def _statements(service) -> int:
    with service.dbs.jobs.engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Questions'").one()[1])


def idle_round(service, n: int) -> None:
    """``--idle``: N jobs one at a time; per job, each process's CPU, wake-ups and the statements."""
    pids = _counted(service, ("publisher", "subscriber", "worker"))
    cpu0 = _cpu_of(pids)
    wakes0 = {k: sum(_wake_ups(p) for p in ps) for k, ps in pids.items()}
    statements0 = _statements(service)
    t0 = time.perf_counter()
    for _ in range(n):
        bell = outcome_bell(service.run_dir)
        job, _ = submit(service.settings, service.dbs, "noop", "{}")
        if wait_for(service.dbs, job.job_id, 30, run_dir=service.run_dir, bell=bell).status != "succeeded":
            raise SystemExit(f"bench failed: job {job.job_id} did not succeed")
    took = time.perf_counter() - t0
    statements = _statements(service) - statements0 - 1
    cpu = {k: (v - cpu0[k]) / n * 1e3 for k, v in _cpu_of(pids).items()}
    wakes = {k: (sum(_wake_ups(p) for p in ps) - wakes0[k]) / n for k, ps in pids.items()}
    figure(f"{n} idle noop jobs, one at a time (load {os.getloadavg()[0]:.1f})",
           f"{took / n * 1e3:.2f} ms each, submit to outcome read; {statements / n:.1f} statements per job")
    figure("  CPU ms per job", f"all={sum(cpu.values()):.2f} " + " ".join(f"{k}={v:.2f}" for k, v in cpu.items()))
    figure("  wake-ups per job", f"all={sum(wakes.values()):.1f} " + " ".join(f"{k}={v:.1f}" for k, v in wakes.items()))


def celery_round(anchors, n: int) -> None:
    """``--api --peers``: Celery's one ``.delay()`` per task, counted as ours is: the CPU of its
    worker (with its pool), RabbitMQ and the client (``drive.py``) per 1,000 tasks. On two
    cores that every process shares, a path's rate is bound by what it spends per job."""
    rabbitmq = _servers()["rabbitmq"]
    rate, spent = anchors.rate_and_cpu("celery", n, lambda worker: _cpu_of({"worker": worker, "rabbitmq": rabbitmq}))
    parts = " ".join(f"{k}={v / n * 1e6:.0f}" for k, v in spent.items())
    figure(f"{n} celery tasks, one .delay() each (load {os.getloadavg()[0]:.1f})",
           f"CPU ms per 1,000 jobs: all={sum(spent.values()) / n * 1e6:.0f} {parts}  ({rate:,.0f}/s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--api", action="store_true", help="one POST /jobs per job from 8 clients, not bulk")
    how.add_argument("--idle", action="store_true", help="one job at a time, each waited for: CPU, "
                                                          "wake-ups and statements per job")
    peers.add_arguments(ap, "with --api: Celery's one .delay() per task, counted the same way, "
                            "before each of our rounds (needs the anchors)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 1_000_000 or not 1 <= args.rounds <= 20:
        ap.error("N 1..1000000, --rounds 1..20")
    anchors = peers.opened(args, wanted=args.api)
    try:
        with started_service() as service:
            for _ in range(args.rounds):
                if args.idle:
                    idle_round(service, args.n)
                else:
                    if anchors is not None:
                        celery_round(anchors, args.n)
                    one_round(service, args.n, args.api)
    finally:
        if anchors is not None:
            anchors.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
