"""What the service costs while it has nothing to do: what it runs for months between jobs.

The service is started as the other scripts start it (and warmed up with 50 jobs), left alone a
few seconds, and then watched for ``--seconds``: the CPU of each daemon and of the worker
processes (user + system, as a share of one core), MariaDB's (``mariadbd``) and RabbitMQ's
(``beam.smp``), and the connections opened to each server in that time, per hour: MariaDB's
global ``Connections`` counter, RabbitMQ's ``connection_created`` churn counter (through
``rabbitmqctl eval``; "?" where it cannot be read). The servers' figures are the service's own
only while nothing else uses those servers, so run it on a quiet machine; ``--rounds`` repeats
the watch in one service.

usage: .venv/bin/python bench/idle.py [--seconds 120] [--rounds 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_per_job import _cpu_of, _daemons, _servers
from harness import figure, started_service

DAEMONS = ("publisher", "subscriber", "worker", "pinger", "admin")


def broker_connections_created() -> int | None:
    """RabbitMQ's count of the connections it accepted since it started (every client's)."""
    try:
        out = subprocess.run(["rabbitmqctl", "eval", "ets:tab2list(connection_churn_metrics)."],
                             capture_output=True, text=True, timeout=60).stdout
        # [{rabbit@host,ConnectionsCreated,ConnectionsClosed,ChannelsCreated,...}]
        return sum(int(row.split(",")[1]) for row in out.strip().strip("[]").split("},{") if row)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def db_connections(service) -> int:
    with service.dbs.jobs.engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Connections'").one()[1])


def watch(service, seconds: float) -> None:
    pids = _daemons(service.run_dir, DAEMONS)
    pids.update(_servers())
    cpu0, broker0, db0 = _cpu_of(pids), broker_connections_created(), db_connections(service)
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    cpu = {k: (v - cpu0[k]) / took * 100 for k, v in _cpu_of(pids).items()}
    broker1, db1 = broker_connections_created(), db_connections(service)
    per_hour = 3600 / took
    broker = "?" if broker0 is None or broker1 is None else f"{(broker1 - broker0) * per_hour:,.0f}"
    own = sum(v for k, v in cpu.items() if k in DAEMONS)
    figure(f"idle {took:.0f} s", "CPU % of a core: " + " ".join(f"{k}={v:.2f}" for k, v in cpu.items())
           + f" (the service's own {own:.2f}); connections opened per hour: rabbitmq={broker} "
           f"mariadb={(db1 - db0) * per_hour:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settle", type=float, default=15.0, help="seconds left alone before watching")
    args = ap.parse_args()
    with started_service() as service:
        time.sleep(args.settle)
        for _ in range(args.rounds):
            watch(service, args.seconds)


if __name__ == "__main__":
    main()
