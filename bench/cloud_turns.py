"""What the cloud API limits cost per cloud call: one turn of a (provider, account) key.

Every cloud call of a worker takes a turn first (``db/cloud_rates.py``: one short transaction on
the key's row in the provisioning DB). Here, on SQLite and on MariaDB, in the same run:

- a turn when none has to be waited for, one process (p50/p99), beside a heartbeat write (the
  cheapest write transaction the daemons make) on the same database;
- turns of one key from 4 processes at once (the row's lock shared): per turn and in all;
- a local-cloud ``list_nodes`` through the limiter beside the same call made directly: what the
  limit adds to the cheapest cloud call there is.

Nothing is waited for (the key's rate is far above what is asked), so the figures are the cost
of the bookkeeping alone. Removes its scratch directory and its ``ewbench_<tag>`` database.

    .venv/bin/python bench/cloud_turns.py [-n 1000]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MYSQL, _drop_database, figure, latency_text, new_tag, percentile  # noqa: E402

from enstratus_workers.cloud.rate_policy import Policy  # noqa: E402
from enstratus_workers.config.settings import CloudLimitSettings, Secret, WorkerSettings  # noqa: E402
from enstratus_workers.db import open_databases  # noqa: E402
from enstratus_workers.db.cloud_rates import CloudRateStore  # noqa: E402
from enstratus_workers.layout import Layout  # noqa: E402

FREE = Policy(rate=100_000.0, max_wait_s=5.0, recover_after_s=60.0)   # never a wait
PROCESSES = 4


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _taker(url: str, home: str, n: int, start: float, results) -> None:
    from enstratus_workers.db.engine import make_engine

    store = CloudRateStore(make_engine(url, Layout(Path(home)), create_database=False))
    store.take_turn("bench", "warm-up", FREE)
    time.sleep(max(0.0, start - time.time()))
    results.put(_timed(lambda: store.take_turn("bench", "shared", FREE), n))


def _database(name: str, url: str, home: Path, n: int) -> None:
    dbs = open_databases(WorkerSettings(provisioning_url=Secret(url), analytics_url=Secret(url)), Layout(home))
    try:
        store = CloudRateStore(dbs.provisioning)
        store.take_turn("bench", "one", FREE)
        turn = _timed(lambda: store.take_turn("bench", "one", FREE), n)
        beat = _timed(lambda: dbs.heartbeats.beat("bench", "one", ttl_s=30), n)
        figure(f"{name}: a turn, one process", latency_text(turn), percentile(turn, 50),
               {"heartbeat-write": percentile(beat, 50)}, who="turn")
        figure(f"{name}: a heartbeat write, one process", latency_text(beat))
        ctx = multiprocessing.get_context("fork")
        results, start = ctx.Queue(), time.time() + 2.0
        procs = [ctx.Process(target=_taker, args=(url, str(home), n // PROCESSES, start, results))
                 for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        shared = [ms for _ in procs for ms in results.get(timeout=600)]
        for p in procs:
            p.join()
        wall = max(0.001, time.time() - start)
        figure(f"{name}: a turn of one key, {PROCESSES} processes at once", latency_text(shared),
               percentile(shared, 50), {"one-process": percentile(turn, 50)}, who="turn")
        figure(f"{name}: turns of one key, {PROCESSES} processes, in all", f"{len(shared) / wall:.0f} turns/s")
    finally:
        dbs.close()


def _local_call(home: Path, n: int) -> None:
    """list_nodes of the local cloud, directly and through the limiter (SQLite budget)."""
    from enstratus_workers.actions.registry import ActionContext
    from enstratus_workers.cloud.limiter import CloudLimiter
    from enstratus_workers.cloud.local_driver import LocalNodeDriver

    dbs = open_databases(WorkerSettings(provisioning_url=Secret("sqlite:///local.db"),
                                        analytics_url=Secret("sqlite:///local-a.db")), Layout(home))
    try:
        driver = LocalNodeDriver("k", "s", ex_state_dir=home / "local-cloud")
        limiter = CloudLimiter(CloudLimitSettings(rate=100_000.0), lambda: CloudRateStore(dbs.provisioning))
        context = ActionContext(job_id=1, attempt=1, queue="q", worker="w", logger=logging.getLogger("bench"))
        limited = limiter.limit(driver, "local", "bench", context)
        direct = _timed(driver.list_nodes, n)
        through = _timed(limited.list_nodes, n)
        figure("local cloud list_nodes, direct", latency_text(direct))
        figure("local cloud list_nodes, through the limiter (SQLite)", latency_text(through),
               percentile(through, 50), {"direct": percentile(direct, 50)}, who="limited")
    finally:
        dbs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="turns per figure (default 1000)")
    n = parser.parse_args().n
    tag, home = new_tag(), Path(tempfile.mkdtemp(prefix="ewbench-"))
    database = f"ewbench_{tag}"
    try:
        _database("sqlite", "sqlite:///turns.db", home, n)
        _database("mariadb", f"mysql+pymysql://{MYSQL['user']}@{MYSQL['host']}:{MYSQL['port']}/{database}", home, n)
        _local_call(home, n)
    finally:
        _drop_database(database)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
