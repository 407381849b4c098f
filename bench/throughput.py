"""Throughput of the running service on RabbitMQ + MariaDB, beside the raw-pika ceiling of the same run.

N ``noop`` jobs are submitted (in batches of 500 through the bulk submit API, as an API server
would) to a service started with the init script in a scratch install root; the clock runs from
the first submit to the last recorded outcome. Then ``../shared/bench/ceiling.py`` measures raw
pika on the same broker, and with ``--peers`` ``anchors.sh`` measures Celery and Dramatiq too.

usage: .venv/bin/python bench/throughput.py [N] [--peers] [--embedded]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = REPO.parent / "shared" / "bench"
sys.path.insert(0, str(REPO))

from enstratus_workers.config import load_settings  # noqa: E402
from enstratus_workers.db import NewJob, open_databases  # noqa: E402
from enstratus_workers.layout import Layout  # noqa: E402
from tests import servicehome  # noqa: E402


def init(home: Path, verb: str) -> None:
    result = servicehome.init(home, verb, timeout=120)
    if verb == "start" and result.returncode != 0:
        raise SystemExit(f"service did not start: {result.stdout}{result.stderr}")


def run_service(n: int, embedded: bool) -> float:
    tag = uuid.uuid4().hex[:8]
    scratch = Path(tempfile.mkdtemp(prefix="ew-bench-"))
    amqp = None if embedded else {"exchange": f"ewbench.{tag}", "queue_prefix": f"ewbench.{tag}."}
    mysql = None if embedded else f"mysql+pymysql://root@127.0.0.1:3306/ewbench_{tag}"
    home = servicehome.make_home(scratch, amqp=amqp, mysql_url=mysql)
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    init(home, "start")
    try:
        time.sleep(3)  # let the worker processes connect
        warm = [NewJob("noop", "{}", "default", 1)] * 50
        dbs.jobs.submit_many(warm)
        _wait_succeeded(dbs, 50)
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            dbs.jobs.submit_many([NewJob("noop", "{}", "default", 1)] * min(500, n - i))
        _wait_succeeded(dbs, 50 + n)
        elapsed = time.perf_counter() - t0
    finally:
        init(home, "stop")
        dbs.close()
        if not embedded:
            import pymysql
            conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
            conn.cursor().execute(f"DROP DATABASE IF EXISTS ewbench_{tag}")
            conn.close()
            _delete_queues(f"ewbench.{tag}")
        shutil.rmtree(scratch, ignore_errors=True)
    return elapsed


def _wait_succeeded(dbs, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = dbs.jobs.counts()
        if counts["succeeded"] >= n:
            return
        if counts["failed"] or counts["dead"]:
            raise SystemExit(f"jobs failed during the benchmark: {counts}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts}")
        time.sleep(0.01)


def _delete_queues(prefix: str) -> None:
    import pika
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    ch = conn.channel()
    for q in ("default", "default.dead"):
        ch.queue_delete(f"{prefix}.{q}")
    for ex in (prefix, prefix + ".dead"):
        ch.exchange_delete(ex)
    conn.close()


def ceiling(n: int) -> float:
    out = subprocess.run([sys.executable, str(SHARED_BENCH / "ceiling.py"), str(n)], capture_output=True,
                         text=True, check=True).stdout
    return float(re.search(r"rate=(\d+)/s", out).group(1))


def peers(n: int) -> dict[str, float]:
    out = subprocess.run(["bash", str(SHARED_BENCH / "anchors.sh"), str(n)], capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        m = re.search(r"^(\w+).*rate=(\d+)/s(.*)$", line)
        if m:
            rates[m.group(1) + m.group(3).replace(" ", "_")] = float(m.group(2))
    return rates


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int, nargs="?", default=10000)
    p.add_argument("--peers", action="store_true", help="also run anchors.sh (Celery, Dramatiq)")
    p.add_argument("--embedded", action="store_true", help="also measure the embedded default")
    args = p.parse_args()
    elapsed = run_service(args.n, embedded=False)
    ours = args.n / elapsed
    ceil = ceiling(args.n)
    print(f"enstratus-workers (amqp+mariadb) n={args.n} end_to_end_s={elapsed:.2f} rate={ours:.0f}/s")
    print(f"ceiling (raw pika, same run)        rate={ceil:.0f}/s")
    print(f"ratio to ceiling: {ours / ceil:.1%}")
    if args.embedded:
        e = run_service(args.n, embedded=True)
        print(f"enstratus-workers (embedded sqlite) n={args.n} rate={args.n / e:.0f}/s ({args.n / e / ceil:.1%} of ceiling)")
    if args.peers:
        for name, rate in peers(args.n).items():
            print(f"peer {name:<32} rate={rate:.0f}/s  ours/peer={ours / rate:.2f}x  peer/ceiling={rate / ceil:.1%}")


if __name__ == "__main__":
    main()
