"""Two hosts on one machine: two install roots with host.name host1 and host2, each running its
publisher, subscriber and pinger (host1 its admin daemon too, whose GET /hosts is watched),
sharing one MariaDB database and one RabbitMQ exchange, as two hosts of a fleet would. All
seven daemons are started at once, through their bin wrappers, without --name (so each is
named after its host). RabbitMQ + MariaDB, loopback, bounded.

- host2 killed -9 (every process) while its jobs run: host1 re-runs them once host2's
  heartbeats expired (its subscriber takes over what the broker redelivered, or its publisher
  re-publishes), every job succeeds with each attempt recorded once, host1's GET /hosts shows
  host2 dead, and host1's watchdog restarts only host1's daemons;
- host2 cut off (SIGSTOP of every process) past its heartbeats' expiry: its broker connection
  stays open (the AMQP heartbeat allows a minute), so nothing is redelivered and host1's
  publisher alone re-publishes what host2 was running; let go, host2 records nothing twice and
  shows alive again.

The daemons are killed at the end rather than stopped: their graceful stop is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

JOBS, SECONDS = 8, 2.0   # sleeps: two worker processes per host keep each host busy a while


BIN = sh.REPO / "services" / "worker" / "bin"


class Host:
    """One host of the fleet: its install root and the daemons it runs."""

    def __init__(self, home: Path, name: str, daemons: tuple[str, ...]):
        self.home, self.name, self.daemons = home, name, daemons

    def start(self, daemon: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / daemon), "start"], env=sh.env_for(self.home), capture_output=True,
                              text=True, timeout=90)

    def pid(self, daemon: str) -> int:
        return int((self.home / "services/worker/run" / f"{daemon}@{self.name}.pid").read_text().split()[0])

    def signal_all(self, signum: int) -> list[int]:
        pids = sh.our_processes(self.home)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids

    def hosts(self) -> dict[str, dict]:
        """This host's ``GET /hosts``: the fleet as its admin daemon shows it."""
        url = (self.home / "services/worker/run" / f"admin@{self.name}.url").read_text().strip()
        token = (self.home / "services/worker/run/admin.token").read_text().strip()
        req = urllib.request.Request(url + "hosts", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return {h["name"]: h for h in json.load(r)}


@pytest.fixture
def fleet(amqp_names, mysql_url):
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    # a short root: the subscriber's worker socket lives under it (AF_UNIX paths hold 107 bytes)
    root = Path(tempfile.mkdtemp(prefix="ewfleet-"))
    hosts = [Host(sh.make_home(root / name, amqp=amqp_names, mysql_url=mysql_url,
                               worker_props={"host.name": name, "action.max_attempts": 5}), name, daemons)
             for name, daemons in (("host1", ("publisher", "subscriber", "pinger", "admin")),
                                   ("host2", ("publisher", "subscriber", "pinger")))]
    dbs = open_databases(load_settings(Layout(hosts[0].home)).worker, Layout(hosts[0].home))
    try:
        with ThreadPoolExecutor(max_workers=7) as pool:   # the fleet boots at once
            started = list(pool.map(lambda hd: hd[0].start(hd[1]), [(h, d) for h in hosts for d in h.daemons]))
        assert all(r.returncode == 0 for r in started), [r.stdout + r.stderr for r in started]
        yield hosts, dbs
    finally:
        dbs.close()
        for h in hosts:
            h.signal_all(signal.SIGCONT)
            sh.kill_strays(h.home)
        shutil.rmtree(root, ignore_errors=True)


def submit_sleeps(dbs) -> list[int]:
    from enstratus_workers.db import NewJob

    return [dbs.jobs.submit(NewJob("sleep", json.dumps({"seconds": SECONDS}), "default", 5))[0].job_id
            for _ in range(JOBS)]


def running_on(dbs, host: str) -> list[int]:
    with dbs.provisioning.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(
            "SELECT job_id FROM enstratus_job WHERE status = 'running' AND worker = :w"), {"w": f"default@{host}"})]


def events_per_attempt(dbs) -> dict[tuple[int, int], int]:
    with dbs.analytics.connect() as conn:
        rows = conn.execute(sa.text("SELECT job_id, attempt, COUNT(*) FROM enstratus_job_event "
                                    "GROUP BY job_id, attempt")).all()
    return {(j, a): n for j, a, n in rows}


def all_succeeded(dbs, ids) -> bool:
    return all(dbs.jobs.get(i).status == "succeeded" for i in ids)


def test_a_killed_hosts_jobs_run_on_the_other_which_shows_it_dead_and_restarts_only_its_own(fleet):
    (host1, host2), dbs = fleet
    # Given both hosts alive in host1's view, with their daemons, and jobs running on both
    assert sh.wait_until(lambda: {h["state"] for h in host1.hosts().values()} == {"alive"}, 20), host1.hosts()
    assert sh.wait_until(lambda: {d["daemon"] for d in host1.hosts()["host2"]["daemons"]} == {
        "subscriber", "publisher", "pinger"}, 20), host1.hosts()
    assert {d["daemon"] for d in host1.hosts()["host1"]["daemons"]} == {"subscriber", "publisher", "pinger", "admin"}
    ids = submit_sleeps(dbs)
    assert sh.wait_until(lambda: running_on(dbs, "host2") and running_on(dbs, "host1"), 30)
    lost = running_on(dbs, "host2")

    # When every process of host2 is killed -9 (its pinger and watchdog too)
    host2.signal_all(signal.SIGKILL)
    killed_at = time.monotonic()

    # Then host1's GET /hosts shows host2 dead once its heartbeats expired
    assert sh.wait_until(lambda: host1.hosts()["host2"]["state"] == "dead", 30, interval=0.5)
    dead = host1.hosts()["host2"]
    assert {d["state"] for d in dead["daemons"]} == {"dead"} and dead["workers"] == []
    # and host1 runs every job to success, host2's lost ones included, each attempt recorded once
    assert sh.wait_until(lambda: all_succeeded(dbs, ids), 60, interval=0.5), [dbs.jobs.get(i) for i in ids]
    recovered_in = time.monotonic() - killed_at
    assert all(dbs.jobs.get(i).worker.startswith("default@host1.") for i in lost)
    counts = events_per_attempt(dbs)
    assert set(n for (j, _), n in counts.items() if j in ids) == {1}
    assert {j for j, _ in counts} >= set(ids)
    time.sleep(2.5)   # one more heartbeat of host1's daemons, carrying their counts
    beats = {(hb.daemon, hb.host): hb.details for hb in dbs.heartbeats.all()}
    recovered = beats[("publisher", "host1")]["recovered"]
    taken_over = beats[("subscriber", "host1")]["stats"]["taken_over"]
    print(f"\nhost2's {len(lost)} running jobs done on host1 {recovered_in:.1f} s after the kill; "
          f"re-published by host1's publisher: {recovered}, taken over by host1's subscriber: {taken_over}")
    assert recovered + taken_over >= len(lost)

    # And host1's watchdog left host2 alone (nothing of host2 runs), but restarts host1's own
    assert sh.our_processes(host2.home) == []
    before = host1.pid("publisher")
    os.kill(before, signal.SIGKILL)
    assert sh.wait_until(lambda: (host1.home / "services/worker/run/publisher@host1.pid").exists()
                         and host1.pid("publisher") != before, 30, interval=0.2)
    assert sh.our_processes(host2.home) == []


def test_a_host_cut_off_past_its_heartbeats_and_back_records_nothing_twice(fleet):
    (host1, host2), dbs = fleet
    assert sh.wait_until(lambda: {h["state"] for h in host1.hosts().values()} == {"alive"}, 20), host1.hosts()
    ids = submit_sleeps(dbs)
    assert sh.wait_until(lambda: running_on(dbs, "host2"), 30)
    # When host2 is frozen (every process: a host cut off) until host1 shows it dead and has
    # re-published what it was running, then let go
    frozen = host2.signal_all(signal.SIGSTOP)
    lost = running_on(dbs, "host2")
    try:
        assert sh.wait_until(lambda: host1.hosts()["host2"]["state"] == "dead", 30, interval=0.5)
        assert sh.wait_until(lambda: not running_on(dbs, "host2"), 30, interval=0.5)
        # the broker redelivered nothing (host2's connection is open): host1's publisher did it
        time.sleep(2.5)   # one more heartbeat of host1's publisher, carrying its count
        publisher = next(hb for hb in dbs.heartbeats.all() if (hb.daemon, hb.host) == ("publisher", "host1"))
        assert publisher.details["recovered"] >= len(lost), (publisher.details, lost)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # Then every job succeeds, with one event per attempt and none for host2's lost attempts
    assert sh.wait_until(lambda: all_succeeded(dbs, ids), 60, interval=0.5), [dbs.jobs.get(i) for i in ids]
    counts = events_per_attempt(dbs)
    assert set(n for (j, _), n in counts.items() if j in ids) == {1}
    with dbs.analytics.connect() as conn:
        succeeded = conn.execute(sa.text("SELECT job_id, COUNT(*) FROM enstratus_job_event "
                                         "WHERE outcome = 'succeeded' GROUP BY job_id")).all()
    assert sorted(succeeded) == sorted((i, 1) for i in ids)
    # and host2 is alive again in host1's view
    assert sh.wait_until(lambda: host1.hosts()["host2"]["state"] == "alive", 30, interval=0.5)
