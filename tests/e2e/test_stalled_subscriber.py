"""Two owners of one job: a subscriber frozen past its heartbeat's expiry (SIGSTOP, as a frozen
VM) resumes while the rest carried on — the other subscriber got the broker's redelivery of its
work, and the publisher was killed and restarted meanwhile. Every job must still succeed, and
no (job, attempt) may get two analytics events. RabbitMQ + MariaDB, loopback only, bounded.

The two subscribers run from two install roots sharing the broker's names and the database,
as two hosts would; the AMQP heartbeat is 2 s so the broker gives up on the frozen one fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BIN = sh.REPO / "services" / "worker" / "bin"
NOOPS, SLEEPS = 240, 60
FROZEN_S = 13          # beyond the subscriber's heartbeat TTL (10 s) and the AMQP heartbeat (2 s)


def daemon(home: Path, which: str, verb: str, name: str) -> None:
    r = subprocess.run([str(BIN / which), verb, "--name", name], env=sh.env_for(home),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def pid_of(home: Path, which: str, name: str) -> int:
    return int((home / "services" / "worker" / "run" / f"{which}@{name}.pid").read_text().split()[0])


@pytest.fixture
def homes(tmp_path, amqp_names, mysql_url):
    amqp = {**amqp_names, "heartbeat": 2, "prefetch": 40}
    props = {"action.max_attempts": 5, "worker.grace_period": 3}
    a = sh.make_home(tmp_path / "a", amqp=amqp, mysql_url=mysql_url, worker_props=props)
    b = sh.make_home(tmp_path / "b", amqp=amqp, mysql_url=mysql_url, worker_props=props)
    try:
        yield a, b
    finally:
        for home in (a, b):
            for pid in sh.our_processes(home):
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_stalled_subscriber_that_resumes_records_nothing_twice(homes):
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import NewJob, open_databases
    from enstratus_workers.layout import Layout

    home_a, home_b = homes
    dbs = open_databases(load_settings(Layout(home_a)).worker, Layout(home_a))
    try:
        # Given a publisher and two subscribers ("a" and "b") sharing one broker and database
        daemon(home_a, "publisher", "start", "p")
        daemon(home_a, "subscriber", "start", "a")
        daemon(home_b, "subscriber", "start", "b")

        def both_consuming():
            beats = {hb.name: hb.details for hb in dbs.heartbeats.all() if hb.daemon == "subscriber"}
            return all(beats.get(n, {}).get("connected") for n in ("a", "b"))

        assert sh.wait_until(both_consuming, 40, interval=0.2), dbs.heartbeats.all()
        # and a few hundred jobs: no-ops and 0.2 s sleeps, interleaved
        dbs.jobs.submit_many([NewJob("sleep", '{"seconds": 0.2}', "default", 5) if i % 5 == 0
                              else NewJob("noop", "{}", "default", 5) for i in range(NOOPS + SLEEPS)])

        def received(name):
            return next((hb.details["stats"]["received"] for hb in dbs.heartbeats.all()
                         if hb.daemon == "subscriber" and hb.name == name), 0)

        assert sh.wait_until(lambda: received("a") > 0 and received("b") > 0, 30, interval=0.1)

        # When "a" freezes with work in hand, past its heartbeat's expiry,
        frozen = pid_of(home_a, "subscriber", "a")
        os.kill(frozen, signal.SIGSTOP)
        t_stop = time.monotonic()
        # the publisher is killed and restarted meanwhile,
        time.sleep(1)
        os.kill(pid_of(home_a, "publisher", "p"), signal.SIGKILL)
        time.sleep(0.5)
        daemon(home_a, "publisher", "start", "p")
        # and "a" resumes once the rest has carried on without it
        time.sleep(max(0.0, FROZEN_S - (time.monotonic() - t_stop)))
        os.kill(frozen, signal.SIGCONT)

        # Then every job succeeds
        total = NOOPS + SLEEPS
        assert sh.wait_until(lambda: dbs.jobs.counts()["succeeded"] == total, 60, interval=0.5), \
            dbs.jobs.counts()
        # and no (job, attempt) has two analytics events, while every job has one for its attempt
        with dbs.analytics.connect() as conn:
            doubled = conn.execute(sa.text(
                "SELECT job_id, attempt, COUNT(*) FROM enstratus_job_event "
                "GROUP BY job_id, attempt HAVING COUNT(*) > 1")).all()
            with_event = conn.execute(sa.text(
                "SELECT COUNT(DISTINCT job_id) FROM enstratus_job_event")).scalar()
        assert doubled == [] and with_event == total
        # and the freeze did hand work to both: the broker redelivered what "a" held
        time.sleep(2.5)   # one more heartbeat each, carrying the final counts
        stats = {hb.name: hb.details["stats"] for hb in dbs.heartbeats.all() if hb.daemon == "subscriber"}
        print("\nsubscriber stats after the freeze:", stats)
        assert sum(s["received"] for s in stats.values()) > total, stats
    finally:
        dbs.close()   # the fixture kills the daemons: their graceful stop is not under test here
