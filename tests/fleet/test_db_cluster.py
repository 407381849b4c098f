"""The service on a 3-node Galera cluster of its own, through a URL naming all three nodes:
one writer node for every process, moved from together when it goes and back when it returns,
certification conflicts retried to success, and a cluster that is all down waited out.

The cluster is the session's (``conftest.py``); a test that stops nodes heals it after.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from enstratus_workers.clock import now_ms
from enstratus_workers.config import load_settings
from enstratus_workers.config.dburl import Node
from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import Event, NewJob, Outcome, open_databases, retry
from enstratus_workers.jobs.submit import submit
from enstratus_workers.layout import Layout
from tests import servicehome as sh

pytestmark = [pytest.mark.slow]


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"ewfleet_{tag}_prov", f"ewfleet_{tag}_anal"


def settings_for(cluster, nodes=None) -> WorkerSettings:
    prov, anal = names()
    return WorkerSettings(provisioning_url=Secret(cluster.url(prov, nodes)),
                          analytics_url=Secret(cluster.url(anal, nodes)))


def node(cluster, i) -> Node:
    return Node("127.0.0.1", cluster.nodes[i].sql)


def outcome(job_id: int, owner: str = "test") -> Outcome:
    t = now_ms()
    return Outcome(job_id=job_id, attempt=1, status="succeeded", worker="w", start_ms=t, end_ms=t,
                   result="{}", error=None, owner=owner)


def test_the_job_store_runs_through_a_three_node_url(galera_cluster, tmp_path):
    # Given the service's databases opened through URLs naming the three nodes
    worker = settings_for(galera_cluster)
    dbs = open_databases(worker, Layout(tmp_path))
    try:
        # Then both engines write to the first node, the first healthy one in order
        assert dbs.provisioning.enstratus_writer.current == node(galera_cluster, 0)
        assert dbs.analytics.enstratus_writer.current == node(galera_cluster, 0)
        # And every connection's reads wait for the cluster's earlier commits (a node that has
        # not applied a job's commit yet must not answer that the job does not exist)
        for engine in (dbs.provisioning, dbs.analytics):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT @@session.wsrep_sync_wait").scalar() == 1
        # When jobs are submitted, relayed and recorded as submit(), the publisher and the recorder do
        jobs = [dbs.jobs.submit(NewJob("noop", "{}", "default", 3))[0] for _ in range(20)]
        relayed = []
        assert dbs.jobs.relay_pending(100, relayed.extend) == 20
        applied = dbs.jobs.record_outcomes([outcome(j.job_id) for j in jobs])
        dbs.events.record([Event(j.job_id, "noop", "default", 1, "succeeded", 1, "w", now_ms()) for j in jobs])
        # Then every outcome took effect, and every node holds the same rows and totals
        assert len(applied) == 20
        prov = dbs.provisioning.url.database
        for i in range(3):
            assert sh.wait_until(lambda i=i: galera_cluster.sql(
                i, f"SELECT status, COUNT(*) FROM {prov}.enstratus_job GROUP BY status") == (("succeeded", 20),), 10)
            assert galera_cluster.sql(i, f"SELECT jobs FROM {prov}.enstratus_job_total "
                                         "WHERE status = 'succeeded'") == ((20,),)
    finally:
        dbs.close()


def pinned_pair(cluster, tmp_path):
    """Two stores of one database, one writing through node 1 and one through node 2 (as two
    hosts that disagree about the writer for a moment), and what node 1's engine saw fail."""
    worker = settings_for(cluster)
    first = open_databases(worker, Layout(tmp_path))
    url = worker.provisioning_url.reveal()
    second = open_databases(WorkerSettings(provisioning_url=Secret(url.replace(
        ",".join(n.address for n in cluster.nodes), cluster.nodes[1].address)),
        analytics_url=worker.analytics_url), Layout(tmp_path))
    codes: list = []
    sa.event.listen(first.provisioning, "handle_error",
                    lambda ctx: codes.append(retry.error_code(ctx.original_exception)))
    return first, second, codes


def before_first_commit(engine, do) -> None:
    """Run ``do`` once, just before ``engine``'s next COMMIT is sent (it then loses to it)."""
    fired = []

    def collide(_conn):
        if not fired:
            fired.append(True)
            do()

    sa.event.listen(engine, "commit", collide)


def test_two_writers_on_different_nodes_conflict_and_the_loser_retries_to_success(galera_cluster, tmp_path):
    first, second, codes = pinned_pair(galera_cluster, tmp_path)
    try:
        # Given two jobs, relayed, and a recorder writing through each of two nodes
        a, b = (first.jobs.submit(NewJob("noop", "{}", "default", 3))[0] for _ in range(2))
        first.jobs.relay_pending(10, lambda jobs: None)
        assert sh.wait_until(lambda: second.jobs.get(b.job_id) is not None
                             and second.jobs.get(b.job_id).status == "queued", 10)
        # When both record an outcome at once: node 2's commits first, both adding to the
        # same totals row, while node 1's transaction is open
        before_first_commit(first.provisioning, lambda: second.jobs.record_outcomes([outcome(b.job_id, "two")]))
        applied = first.jobs.record_outcomes([outcome(a.job_id, "one")])
        # Then node 1's commit was refused by certification (1213) and the retry succeeded
        assert 1213 in codes
        assert [o.job_id for o in applied] == [a.job_id]
        # And both outcomes are recorded, and counted once each, on every node
        assert {first.jobs.get(j.job_id).status for j in (a, b)} == {"succeeded"}
        assert first.jobs.counts()["succeeded"] == 2
    finally:
        first.close()
        second.close()


def test_a_keyed_submit_that_loses_to_another_node_returns_the_winners_job(galera_cluster, tmp_path):
    first, second, codes = pinned_pair(galera_cluster, tmp_path)
    try:
        # Given one idempotency key submitted through node 2 while node 1's submit of it is open
        winner = []
        before_first_commit(first.provisioning, lambda: winner.append(
            second.jobs.submit(NewJob("echo", "{}", "default", 3, idempotency_key="order-42"))[0]))
        # When node 1's submit commits
        job, created = first.jobs.submit(NewJob("noop", "{}", "default", 3, idempotency_key="order-42"))
        # Then it lost certification (1213), ran again, and answers the winner's job: no error
        assert 1213 in codes
        assert (job.job_id, job.action, created) == (winner[0].job_id, "echo", False)
    finally:
        first.close()
        second.close()


# -- the daemons ----------------------------------------------------------------------------------

WRITER_LINE = re.compile(r"database '(?P<db>[^']+)': writing to (?P<to>\S+) now, was (?P<was>\S+)")


@pytest.fixture(scope="module")
def fleet_home(galera_cluster, tmp_path_factory):
    """An install on the cluster (both databases through the 3-node URL, the embedded queue),
    publisher, subscriber and pinger running; stopped and cleaned up after the module."""
    prov, anal = names()
    home = sh.make_home(tmp_path_factory.mktemp("fleet"), worker_props={
        "provisioning.url": galera_cluster.url(prov), "analytics.url": galera_cluster.url(anal),
        "worker.default.min": 2, "worker.default.max": 2, "worker.grace_period": 2})
    (home / "services/worker/classes/worker.properties").chmod(0o600)
    started = subprocess.run([str(sh.INIT), "start", "--without-http"], env=sh.env_for(home),
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield home
    finally:
        sh.init(home, "stop")
        sh.kill_strays(home)


def moves(home, daemon: str) -> list[tuple[str, str, str]]:
    """(database, from, to) of every writer move the daemon's log records, in order."""
    log = next((home / "services/worker/log").glob(f"{daemon}@*.log")).read_text(errors="replace")
    return [(m["db"], m["was"], m["to"]) for m in WRITER_LINE.finditer(log)]


class Submitter(threading.Thread):
    """Submits jobs with idempotency keys through ``submit()``, as platform code does, until stopped."""

    def __init__(self, home):
        super().__init__(daemon=True)
        self.layout = Layout(home)
        self.settings = load_settings(self.layout)
        self.keys: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self):
        dbs = open_databases(self.settings.worker, self.layout, ensure=False)
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"fleet-{uuid.uuid4().hex[:6]}-{n}"
                action, args = ("sleep", '{"seconds": 0.2}') if n % 5 == 0 else ("noop", "{}")
                try:
                    submit(self.settings, dbs, action, args, idempotency_key=key)
                    self.keys.append(key)
                except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                    self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                self.stop.wait(0.03)
        finally:
            dbs.close()


def jobs_by_key(home, keys):
    settings = load_settings(Layout(home))
    dbs = open_databases(settings.worker, Layout(home), ensure=False)
    try:
        return {k: dbs.jobs.by_idempotency_key(k) for k in keys}, dbs.events
    finally:
        dbs.close()


def all_done(home, keys) -> bool:
    return not unfinished(home, keys)


def unfinished(home, keys) -> dict:
    """The jobs not finished yet, by key: (status, attempts), or None for a key with no job."""
    found, _ = jobs_by_key(home, keys)
    return {k: (j and (j.status, j.attempts)) for k, j in found.items()
            if j is None or j.status not in ("succeeded", "failed", "dead")}


def refusals(home) -> list[str]:
    """The daemons' log lines about deliveries not run (strangers, dead letters): what a job
    that never finished most likely met."""
    return [line for f in sorted((home / "services/worker/log").glob("*.log"))
            for line in f.read_text(errors="replace").splitlines()
            if "dead-letter" in line or "stranger" in line]


@pytest.mark.timeout(240)
def test_the_writer_node_goes_every_process_moves_to_the_next_and_back(galera, fleet_home):
    home = fleet_home
    first, second = (f"127.0.0.1:{galera.nodes[i].sql}" for i in (0, 1))
    before = {d: len(moves(home, d)) for d in ("publisher", "subscriber", "pinger")}
    # Given jobs being submitted, relayed, run and recorded all along
    submitter = Submitter(home)
    submitter.start()
    try:
        time.sleep(2)
        # When the writer node (the first) is stopped
        galera.stop_node(0)
        # Then every daemon moves its writes to the second node, none to the third
        def moved_to(target):
            return all(any(to == target for _, _, to in moves(home, d)[before[d]:]) for d in before)

        assert sh.wait_until(lambda: moved_to(second), 30, 0.5), {d: moves(home, d) for d in before}
        time.sleep(2)            # work goes on on the second node
        # When the first node comes back (it rejoins by IST) and is synced
        galera.start_node(0)
        # Then every daemon moves back to it within a few seconds
        assert sh.wait_until(lambda: all(moves(home, d)[-1][2] == first for d in before
                                         if len(moves(home, d)) > before[d]), 30, 0.5), \
            {d: moves(home, d) for d in before}
        time.sleep(1)
    finally:
        submitter.stop.set()
        submitter.join(30)
    # Then no submit failed, and every job ran once and succeeded: nothing lost, none failed
    assert submitter.errors == []
    assert len(submitter.keys) > 50
    assert sh.wait_until(lambda: all_done(home, submitter.keys), 60, 0.5), \
        (unfinished(home, submitter.keys), refusals(home)[-20:])
    found, _ = jobs_by_key(home, submitter.keys)
    statuses = {j.status for j in found.values()}
    assert statuses == {"succeeded"}, {k: (j.status, j.error) for k, j in found.items() if j.status != "succeeded"}
    assert {j.attempts for j in found.values()} == {1}
    # And each daemon's first move, for each of its databases, was from node 1 to node 2, and
    # its last back to node 1 (in between, one may have left node 2 while it was the donor of
    # node 1's rejoin: a donor is not synced, and the third node was)
    for d in before:
        seen = moves(home, d)[before[d]:]
        for db in {db for db, _, _ in seen}:
            mine = [(was, to) for name, was, to in seen if name == db]
            assert mine[0] == (first, second) and mine[-1][1] == first, (d, db, mine)


@pytest.mark.timeout(240)
def test_every_node_down_the_daemons_wait_and_pinger_check_names_the_nodes(galera, fleet_home):
    home = fleet_home
    settings = load_settings(Layout(home))
    dbs = open_databases(settings.worker, Layout(home), ensure=False)
    try:
        # Given jobs in flight (0.5 s sleeps) when every database node stops, the writer by a crash
        keys = [f"outage-{uuid.uuid4().hex[:6]}-{n}" for n in range(10)]
        for k in keys:
            submit(settings, dbs, "sleep", '{"seconds": 0.5}', idempotency_key=k)
    finally:
        dbs.close()
    time.sleep(0.5)
    galera.stop_node(2)
    galera.stop_node(1)
    galera.kill_node(0)        # the writer, last, as a crash: it restarts from whatever it wrote
    # When the operator's monitoring runs pinger check
    check = subprocess.run([str(sh.REPO / "services/worker/bin/pinger"), "check", "-t", "60", "--json"],
                           env=sh.env_for(home), capture_output=True, text=True, timeout=90)
    report = json.loads(check.stdout)
    # Then it is CRITICAL, naming each of the three nodes and why it is not fit
    assert check.returncode == 2, check.stdout + check.stderr
    problem = next(p for p in report["problems"] if "no healthy node" in p)
    assert all(n.address in problem for n in galera.nodes), problem
    assert "unreachable" in problem
    # And the daemons are still running, retrying on their own
    time.sleep(1)
    status = sh.init(home, "status").stdout
    assert all(re.search(rf"^{d}@\S+ is running", status, re.M) for d in ("publisher", "subscriber", "pinger")), status
    # When the cluster is back
    galera.heal()
    # Then the jobs that were in flight all end succeeded, and new work runs
    assert sh.wait_until(lambda: all_done(home, keys), 90, 0.5), (unfinished(home, keys), refusals(home)[-20:])
    found, _ = jobs_by_key(home, keys)
    assert {j.status for j in found.values()} == {"succeeded"}, {k: (j.status, j.error) for k, j in found.items()}
    assert sh.submit_wait(home, "echo", {"back": True}, "--timeout", "60")["status"] == "succeeded"
