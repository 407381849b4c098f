"""The subscriber's supervision of its worker processes, through the real daemons (embedded
default): a killed worker is reincarnated and counted, the pool grows under backlog up to max,
a worker that keeps dying is disabled rather than restarted forever, and SIGHUP gives it back."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def home(tmp_path):
    home = sh.make_home(tmp_path, worker_props={"worker.default.min": 1, "worker.default.max": 3})
    yield home
    sh.init(home, "stop")
    for pid in sh.our_processes(home):
        os.kill(pid, signal.SIGKILL)


def cluster(home) -> dict:
    clusters = json.loads(sh.cli(home, "status", "--json").stdout).get("clusters") or [{}]
    return clusters[0]


def worker_pids(home) -> list[int]:
    return [w["pid"] for w in cluster(home).get("worker_details", []) if w.get("pid") and w["state"] != "disabled"]


def live_worker_pids(home) -> list[int]:
    """From the pid files, which are current (the heartbeat's figures may be 2 s old)."""
    pids = []
    for f in (home / "services" / "worker" / "run").glob("worker@*.pid"):
        try:
            pid = int(f.read_text().split()[0])
            os.kill(pid, 0)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return pids


def test_killed_workers_are_reincarnated_and_the_pool_follows_the_backlog(home):
    assert sh.init(home, "start").returncode == 0
    assert sh.wait_until(lambda: len(worker_pids(home)) == 1, 20)

    # When the only worker is killed, it is replaced and the reincarnation counted
    (first,) = worker_pids(home)
    os.kill(first, signal.SIGKILL)
    assert sh.wait_until(lambda: cluster(home).get("reincarnations", 0) >= 1
                         and worker_pids(home) and first not in worker_pids(home), 20), cluster(home)

    # When work piles up with every worker busy, the pool grows to its max (3), no further.
    # The twelve go in at once, in one transaction: one CLI submit each took up to 3 s on a busy
    # machine, as long as an action, and a backlog that never piles up never grows the pool.
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import NewJob, open_databases
    from enstratus_workers.layout import Layout

    dbs = open_databases(load_settings(Layout(home)).worker, Layout(home))
    try:
        dbs.jobs.submit_many([NewJob("sleep", json.dumps({"seconds": 2}), "default", 3)] * 12)
    finally:
        dbs.close()
    assert sh.wait_until(lambda: len(worker_pids(home)) == 3, 30), cluster(home)
    assert sh.wait_until(lambda: json.loads(sh.cli(home, "jobs", "--json", "--status", "succeeded").stdout)
                         and len(json.loads(sh.cli(home, "jobs", "--json", "--status", "succeeded").stdout)) == 12,
                         60)
    assert len(worker_pids(home)) <= 3


def test_a_worker_that_keeps_dying_is_disabled_until_a_reload(home):
    assert sh.init(home, "start").returncode == 0
    assert sh.wait_until(lambda: len(worker_pids(home)) == 1, 20)
    # Given a worker killed five times within a minute (each time as soon as it is back)
    killed: set[int] = set()
    for _ in range(5):
        pid = sh.wait_until(lambda: next((p for p in live_worker_pids(home) if p not in killed), None), 30)
        assert pid, cluster(home)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    # Then it is disabled and reported, not restarted forever
    assert sh.wait_until(lambda: any(w["state"] == "disabled" for w in cluster(home).get("worker_details", [])),
                         30), cluster(home)
    # And no other process is started in its place (it would die the same way, and the next)
    time.sleep(3)
    assert live_worker_pids(home) == [], cluster(home)
    assert [w["state"] for w in cluster(home)["worker_details"]] == ["disabled"]
    # And SIGHUP to the subscriber gives it another chance: one worker, a new process, running
    sub = int(next((home / "services" / "worker" / "run").glob("subscriber@*.pid")).read_text().split()[0])
    os.kill(sub, signal.SIGHUP)
    assert sh.wait_until(lambda: [p for p in worker_pids(home) if p not in killed]
                         and len(worker_pids(home)) == 1, 30), cluster(home)
    assert len(live_worker_pids(home)) == 1
    r = sh.cli(home, "submit", "echo", "--wait", "--json")
    assert json.loads(r.stdout)["status"] == "succeeded"


def test_workers_are_recycled_after_max_tasks_without_losing_work(tmp_path):
    home = sh.make_home(tmp_path, worker_props={"worker.default.min": 1, "worker.default.max": 1,
                                                 "worker.max_tasks_per_child": 3})
    try:
        assert sh.init(home, "start").returncode == 0
        seen: set[int] = set()
        jobs = []
        for i in range(10):
            r = sh.cli(home, "submit", "echo", "--args", json.dumps({"i": i}), "--json")
            jobs.append(json.loads(r.stdout)["job_id"])
            seen.update(live_worker_pids(home))
        def ours():
            return [j for j in json.loads(sh.cli(home, "jobs", "--json").stdout) if j["job_id"] in jobs]

        # Then every action ran (once each, on the one slot), while its process was replaced
        # after every 3 actions: retirements, not crashes, so no reincarnation is counted
        assert sh.wait_until(lambda: all(j["status"] == "succeeded" for j in ours()), 60), ours()
        assert all(j["attempts"] == 1 and j["worker"].endswith(".1") for j in ours())
        seen.update(live_worker_pids(home))
        assert len(seen) >= 2
        assert cluster(home).get("reincarnations", 0) == 0
        log_dir = home / "services" / "worker" / "log"
        assert any("retiring: ran 3 actions" in f.read_text() for f in log_dir.glob("subscriber@*.log"))
    finally:
        sh.init(home, "stop")
        for pid in sh.our_processes(home):
            os.kill(pid, signal.SIGKILL)
