"""Chaos on RabbitMQ + MariaDB: kills, a broker restart, a database restart and a service restart
while 2,000 actions run. Every job must end succeeded, each executed at least once, each attempt
recorded once. Bounded (one run, a few minutes at most) and loopback only.

It stops and starts this machine's RabbitMQ app and MariaDB server, so it runs alone: marker
``serial``, which ``make test`` runs after the rest, on its own. Both are started again in a
``finally``, whatever happens.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(600)]

JOBS = 2000
MARIADB = "/usr/sbin/mariadbd"
# The machine's server only, by its pid file: --exec alone would match every mariadbd on the machine
# (another test's Galera or private nodes), stopping them and mistaking them for this one.
MARIADB_PID = "/run/mysqld/mysqld.pid"


def _pids(home: Path, pattern: str) -> list[int]:
    out = []
    for f in (home / "services" / "worker" / "run").glob(pattern):
        try:
            pid = int(f.read_text().split()[0])
            os.kill(pid, 0)
            out.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return out


def _mysql_up() -> bool:
    import pymysql
    try:
        pymysql.connect(host="127.0.0.1", user="root", connect_timeout=2).close()
        return True
    except pymysql.err.OperationalError:
        return False


def _start_mariadb() -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--pidfile", MARIADB_PID,
                    "--exec", MARIADB], check=False)
    assert sh.wait_until(_mysql_up, 60), "MariaDB did not come back"


def _rabbit(verb: str) -> None:
    subprocess.run(["rabbitmqctl", verb], check=True, capture_output=True, timeout=120)


@pytest.fixture
def chaos_home(tmp_path, amqp_names, mysql_url):
    if not os.access(MARIADB, os.X_OK) or not os.access("/usr/sbin/rabbitmqctl", os.X_OK):
        pytest.skip("needs this machine's own RabbitMQ and MariaDB to restart")
    home = sh.make_home(tmp_path, amqp=amqp_names, mysql_url=mysql_url, worker_props={
        "action.max_attempts": 10, "worker.grace_period": 5, "pinger.heartbeat_interval": 1})
    try:
        yield home
    finally:
        _rabbit("start_app")
        _start_mariadb()
        sh.init(home, "stop")
        for pid in sh.our_processes(home):
            os.kill(pid, signal.SIGKILL)


def test_no_job_is_lost_through_kills_and_restarts(chaos_home, tmp_path):
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import NewJob, open_databases
    from enstratus_workers.layout import Layout

    home, rng = chaos_home, random.Random(7)
    ledger = tmp_path / "executions.txt"
    args = json.dumps({"path": str(ledger), "sleep": 0.01})   # ~10 s of work: kills land mid-action
    settings = load_settings(Layout(home))
    dbs = open_databases(settings.worker, Layout(home))
    tally = Counter()
    t0 = time.monotonic()

    def submit(n):
        dbs.jobs.submit_many([NewJob("test.append", args, "default", 10)] * n)
        tally["submitted"] += n

    def kill(pattern, what):
        pids = sh.wait_until(lambda: _pids(home, pattern), 30)   # one may be between lives
        assert pids, f"no {what} to kill"
        os.kill(rng.choice(pids), signal.SIGKILL)
        tally[f"kill -9 {what}"] += 1
        tally["kills"] += 1

    def recovery(label, since):
        """Seconds from the fault (``since``) until jobs succeed again, into the tally."""
        before = dbs.jobs.counts()["succeeded"]
        assert sh.wait_until(lambda: dbs.jobs.counts()["succeeded"] > before, 90), f"no progress after {label}"
        tally[f"recovery after {label} (s)"] = round(time.monotonic() - since, 1)

    def subscriber_back():
        return bool(_pids(home, "subscriber@*.pid")) and bool(_pids(home, "worker@*.pid"))

    try:
        assert sh.init(home, "start").returncode == 0
        submit(300)
        time.sleep(0.5)
        kill("worker@*.pid", "worker")
        recovery("worker kill", time.monotonic())
        submit(300)
        time.sleep(0.3)
        kill("subscriber@*.pid", "subscriber")             # left to the pinger's watchdog
        t_fault = time.monotonic()
        assert sh.wait_until(subscriber_back, 30), "the watchdog did not restart the subscriber"
        tally["watchdog restarts"] += 1
        recovery("subscriber kill (watchdog)", t_fault)

        # The broker goes away; jobs submitted meanwhile wait in the outbox
        _rabbit("stop_app")
        t_down = time.monotonic()
        submit(200)
        time.sleep(3)
        _rabbit("start_app")
        tally["rabbitmq restarts"] += 1
        recovery("rabbitmq restart", time.monotonic())
        submit(300)
        time.sleep(0.5)
        kill("worker@*.pid", "worker")
        time.sleep(0.3)
        kill("worker@*.pid", "worker")

        # The database goes away; outcomes wait, unacked
        subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--retry", "30", "--pidfile", MARIADB_PID,
                        "--exec", MARIADB], check=True)
        time.sleep(3)
        _start_mariadb()
        t_fault = time.monotonic()
        tally["mariadb restarts"] += 1
        submit(300)
        recovery("mariadb restart", t_fault)

        t_fault = time.monotonic()
        r = sh.init(home, "restart")
        assert r.returncode == 0, r.stdout + r.stderr
        tally["service restarts"] += 1
        submit(300)
        recovery("init-script restart", t_fault)
        time.sleep(1)
        kill("subscriber@*.pid", "subscriber")
        assert sh.wait_until(subscriber_back, 30)
        tally["watchdog restarts"] += 1
        submit(JOBS - tally["submitted"])
        time.sleep(0.5)
        kill("worker@*.pid", "worker")

        def all_done():
            c = dbs.jobs.counts()
            return c["succeeded"] == JOBS or c["dead"] or c["failed"]

        assert sh.wait_until(all_done, 240, interval=0.5), dbs.jobs.counts()
        tally["seconds"] = round(time.monotonic() - t0, 1)
        tally["broker outage to all done (s)"] = round(time.monotonic() - t_down, 1)

        # Then every job succeeded: none lost, none stuck, none dead
        counts = dbs.jobs.counts()
        assert counts["succeeded"] == JOBS, counts
        ids = {j.job_id for j in dbs.jobs.list(limit=JOBS + 10)}
        # each job ran at least once
        lines = [tuple(map(int, l.split())) for l in ledger.read_text().split("\n") if l.strip()]
        executed = Counter(job for job, _ in lines)
        assert set(executed) == ids
        # each attempt recorded once: no (job, attempt) with two analytics events
        import sqlalchemy as sa
        with dbs.analytics.connect() as conn:
            doubled = conn.execute(sa.text(
                "SELECT job_id, attempt, COUNT(*) FROM enstratus_job_event "
                "GROUP BY job_id, attempt HAVING COUNT(*) > 1")).all()
        assert doubled == []
        tally["jobs"] = JOBS
        tally["executions"] = len(lines)
        tally["duplicate executions"] = len(lines) - len(executed)
        tally["jobs retried"] = sum(1 for j in dbs.jobs.list(limit=JOBS + 10) if j.attempts > 1)
    finally:
        print("\nchaos tally: " + ", ".join(f"{k}={v}" for k, v in tally.items()))
        dbs.close()
