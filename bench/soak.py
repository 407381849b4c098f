"""Soak: the service at a steady rate for a long while with short retention, on RabbitMQ +
MariaDB; every minute the database's size and rows and every process's memory.

What it shows is whether anything grows without bound: with retention pruning finished jobs
and their events after ``--retention`` seconds, the job and event tables, the database's size
and each daemon's and worker's RSS must level off after the warm-up (the first
``--retention`` seconds plus a minute) and stay flat. The last line compares the final minute
with the first minute after the warm-up.

usage: .venv/bin/python bench/soak.py [--minutes 20] [--rate 200] [--retention 60]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pymysql  # noqa: E402
from harness import MYSQL, BenchFailed, started_service  # noqa: E402
from memory import service_processes, snapshot  # noqa: E402

from enstratus_workers.db import NewJob  # noqa: E402


def table_rows_and_size(database: str) -> tuple[dict[str, int], float]:
    """Exact rows of the job and event tables, and the database's data + index size in MiB
    (InnoDB's own figure: it changes in pages, so it shows growth, not each row)."""
    conn = pymysql.connect(**MYSQL, database=database)
    try:
        cur = conn.cursor()
        rows = {}
        for table in ("enstratus_job", "enstratus_job_event"):
            cur.execute(f"SELECT COUNT(*) FROM `{table}`")
            rows[table] = int(cur.fetchone()[0])
        cur.execute("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                    "WHERE table_schema = %s", (database,))
        size = float(cur.fetchone()[0]) / 2**20
    finally:
        conn.close()
    return rows, size


class SteadySubmitter(threading.Thread):
    """``rate`` noop jobs a second, in ten small bulk submits a second, until stopped."""

    def __init__(self, service, rate: int):
        super().__init__(name="soak-submitter", daemon=True)
        self.service, self.rate = service, rate
        self.stop = threading.Event()
        self.submitted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        per_tick = max(1, self.rate // 10)
        queue = self.service.settings.worker.default_queue
        next_tick = time.monotonic()
        try:
            while not self.stop.is_set():
                self.service.dbs.jobs.submit_many([NewJob("noop", "{}", queue, 1)] * per_tick)
                self.submitted += per_tick
                next_tick += 0.1
                self.stop.wait(max(0.0, next_tick - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=200, help="jobs submitted per second")
    p.add_argument("--retention", type=int, default=60,
                   help="seconds finished jobs and events are kept (all four retention keys)")
    args = p.parse_args()
    keep = {f"retention.{k}": args.retention for k in ("succeeded", "failed", "dead", "events")}
    with started_service(worker_props=keep) as service:
        database = f"ewbench_{service.tag}"
        submitter = SteadySubmitter(service, args.rate)
        started = time.monotonic()
        submitter.start()
        table = []
        print(f"soak: {args.rate} jobs/s for {args.minutes:g} min, retention {args.retention} s", flush=True)
        try:
            minute = 0
            while minute < args.minutes:
                minute += 1
                time.sleep(max(0.0, started + 60 * minute - time.monotonic()))
                if submitter.error is not None:
                    raise BenchFailed(f"submitting failed: {submitter.error!r}")
                counts = service.dbs.jobs.counts()
                if counts["failed"] or counts["dead"]:
                    raise BenchFailed(f"jobs failed during the soak: {counts}")
                rows, size = table_rows_and_size(database)
                memory = snapshot(service_processes(service.home))
                waiting = counts["pending"] + counts["queued"] + counts["running"]
                table.append((minute, submitter.submitted, waiting, rows, size, memory))
                rss = " ".join(f"{name}={m[0]:.0f}" for name, m in sorted(memory.items()))
                print(f"min {minute:3d} submitted={submitter.submitted} unfinished={waiting} "
                      f"job_rows={rows['enstratus_job']} event_rows={rows['enstratus_job_event']} "
                      f"db={size:.1f}MiB rss_mib: {rss}", flush=True)
        finally:
            submitter.stop.set()
            submitter.join(10)
        settle = min(len(table) - 1, int(args.retention / 60) + 1)
        first, last = table[settle], table[-1]
        print(f"after warm-up (minute {first[0]} -> {last[0]}): "
              f"job_rows x{last[3]['enstratus_job'] / max(1, first[3]['enstratus_job']):.2f}, "
              f"event_rows x{last[3]['enstratus_job_event'] / max(1, first[3]['enstratus_job_event']):.2f}, "
              f"db size x{last[4] / max(0.01, first[4]):.2f}, "
              f"largest RSS growth x{max(last[5][k][0] / first[5][k][0] for k in last[5] if k in first[5]):.2f}",
              flush=True)


if __name__ == "__main__":
    main()
