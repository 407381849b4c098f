"""Issue 9's proof: a fleet of three hosts on a 3-node RabbitMQ cluster and a 3-node Galera
cluster loses nothing while, one after another, a host is killed, a broker node and a database
node stop, and a host is cut off.

Three hosts (``fleet_hosts.py``: each a full service, publisher, subscriber, pinger and admin,
with its own ``host.name``, run and log folders, the same broker node list and the same database
node list) run 2,000 jobs submitted at a steady pace over the faults, one in four a 0.2 s sleep:

1. every process of host 2 killed -9; host 2 started again once host 1 shows it dead;
2. the RabbitMQ node holding the most connections stopped (``rabbitmqctl stop``), then started;
3. the Galera writer node (the first of the URL, which every process writes through) stopped,
   then started (it rejoins by IST);
4. host 3 cut off for 30 s: every one of its processes SIGSTOPped, then SIGCONTed (the issue
   allows it where the test cannot make network namespaces; it keeps its TCP connections open,
   as a cable pulled and put back within the broker's heartbeat timeout does).

Each fault waits until every job in flight when it struck has succeeded before the next one.

**What "each attempt recorded once" means here.** The jobs run ``test.append``, which appends
``<job> <attempt>`` to a ledger at the action's start: a ledger line is an *execution*. A job's
*recorded attempts* are 1..``attempts`` of its row (lost attempts are counted there too). Then:

- every job ``succeeded``, with exactly one analytics event of outcome ``succeeded``, of its
  last attempt, and no (job, attempt) has two events;
- every execution is of a recorded attempt (attempt <= the row's ``attempts``), and the last
  recorded attempt was executed;
- a **duplicate** is an execution of a (job, attempt) already executed: a run nobody recorded
  (its worker was killed or frozen, or its subscriber lost its broker node, after the action
  started but before the running mark was written, so the message was redelivered as the same
  attempt). Duplicates may only be of jobs that were in flight when a fault struck; the tally
  counts them.

The tally (jobs, executions, re-runs of lost attempts, duplicates, each fault with its recovery
times) is printed at the end, also when an assertion failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servicehome as sh
from tests.fleet.fleet_hosts import fleet_names, make_fleet, open_fleet_databases

pytestmark = [pytest.mark.slow, pytest.mark.fleet, pytest.mark.timeout(540)]

JOBS = 2000
SLEEP_EVERY = 4          # one job in four sleeps 0.2 s, the others return at once
FEED_OVER_S = 150.0      # the jobs are submitted at a steady pace over this long (the faults' span)
FREEZE_S = 30.0


class Feeder(threading.Thread):
    """Submits the fleet's jobs (keyed, as platform code does) at a steady pace; ``release()``
    submits the rest at once. A submit that raises is recorded and tried again with its key."""

    def __init__(self, dbs, ledger: Path):
        super().__init__(daemon=True)
        self.dbs, self.ledger = dbs, ledger
        self.tag = uuid.uuid4().hex[:6]
        self.submitted = 0
        self.errors: list[str] = []
        self.released = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        from enstratus_workers.db import NewJob

        began = time.monotonic()
        while self.submitted < JOBS and not self.stop.is_set():
            due = JOBS if self.released.is_set() else int(JOBS * min(1.0, (time.monotonic() - began) / FEED_OVER_S))
            while self.submitted < due and not self.stop.is_set():
                n = self.submitted
                args = {"path": str(self.ledger), **({"sleep": 0.2} if n % SLEEP_EVERY == 0 else {})}
                try:
                    self.dbs.jobs.submit(NewJob("test.append", json.dumps(args), "default", 10,
                                                idempotency_key=f"fleet-{self.tag}-{n}"))
                    self.submitted += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a finding, retried by key
                    self.errors.append(f"job {n}: {type(exc).__name__}: {exc}")
                    self.stop.wait(0.2)
            self.released.wait(0.2)


class Watch:
    """The test's reads of the fleet's job table, through the 3-node URL (a read that meets the
    writer node going is simply read again)."""

    def __init__(self, dbs):
        self.dbs = dbs

    def _rows(self, sql: str, **params) -> list | None:
        try:
            with self.dbs.provisioning.connect() as conn:
                return conn.execute(sa.text(sql), params).all()
        except sa.exc.DBAPIError:
            return None

    def unfinished(self) -> set[int]:
        rows = self._rows("SELECT job_id FROM enstratus_job WHERE status NOT IN "
                          "('succeeded', 'failed', 'dead', 'cancelled')")
        return {r[0] for r in rows or ()}

    def running_on(self, host: str) -> set[int]:
        rows = self._rows("SELECT job_id FROM enstratus_job WHERE status = 'running' AND worker LIKE :w",
                          w=f"%@{host}")
        return {r[0] for r in rows or ()}

    def statuses(self) -> Counter:
        rows = self._rows("SELECT status, COUNT(*) FROM enstratus_job GROUP BY status")
        return Counter(dict(rows or ()))

    def done(self, ids: set[int]) -> bool:
        """Every job of ``ids`` succeeded (a failed or dead one fails the test at once)."""
        if not ids:
            return True
        # the ids are the table's own integers, so they go into the statement as they are
        rows = self._rows(f"SELECT job_id, status FROM enstratus_job WHERE job_id IN ({','.join(map(str, ids))})")
        if rows is None:
            return False
        bad = [(j, s) for j, s in rows if s in ("failed", "dead", "cancelled")]
        assert not bad, f"jobs ended badly: {bad[:10]}"
        return all(s == "succeeded" for _, s in rows)


class Tally:
    """What the test saw, printed at the end: counts, and per fault its moments (s since it struck)."""

    def __init__(self):
        self.counts: dict[str, object] = {}
        self.faults: list[tuple[str, dict[str, str]]] = []
        self.began = time.monotonic()

    def fault(self, name: str) -> dict[str, str]:
        self.faults.append((name, {}))
        return self.faults[-1][1]

    def print(self) -> None:
        lines = [f"fleet fault tally ({time.monotonic() - self.began:.0f} s):",
                 "  " + ", ".join(f"{k}={v}" for k, v in self.counts.items())]
        for name, moments in self.faults:
            lines.append(f"  {name}: " + "; ".join(f"{k} {v}" for k, v in moments.items()))
        print("\n" + "\n".join(lines))


def since(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f} s"


def wait(predicate, timeout: float, what: str, interval: float = 0.25):
    value = sh.wait_until(predicate, timeout, interval)
    assert value, f"not within {timeout:.0f} s: {what}"
    return value


@pytest.fixture
def fleet(rabbit, galera):
    """Three hosts started on the clusters, their databases open, a ledger; on the way out every
    process of every host is let go (SIGCONT) and killed by pid, and the folder removed."""
    root = Path(tempfile.mkdtemp(prefix="ewff-"))   # short: the worker sockets live under it
    hosts = make_fleet(root, rabbit, galera, 3, fleet_names(), worker_props={
        "action.max_attempts": 10, "worker.grace_period": 5})
    dbs = open_fleet_databases(hosts[0])            # makes the schema once, before the daemons
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            started = list(pool.map(lambda h: h.start(), hosts))
        assert all(r.returncode == 0 for r in started), [r.stdout + r.stderr for r in started]
        yield hosts, dbs, root / "executions.txt"
    finally:
        dbs.close()
        for h in hosts:
            h.signal_all(signal.SIGCONT)
            sh.kill_strays(h.home)
        shutil.rmtree(root, ignore_errors=True)


def test_the_fleet_loses_nothing_through_a_host_kill_a_broker_node_a_database_node_and_a_cut_off(
        fleet, rabbit, galera):
    (host1, host2, host3), dbs, ledger = fleet
    watch, tally = Watch(dbs), Tally()
    feeder = Feeder(dbs, ledger)
    struck: set[int] = set()      # every job in flight when a fault struck
    try:
        # Given three hosts alive in host 1's view, and jobs flowing through all three
        wait(lambda: {host1.state_of(h) for h in ("host1", "host2", "host3")} == {"alive"}, 30,
             "three hosts alive in host 1's GET /hosts")
        feeder.start()
        wait(lambda: watch.statuses()["succeeded"] >= 50, 60, "the first 50 jobs")

        # When every process of host 2 is killed -9 while it runs jobs
        wait(lambda: watch.running_on("host2"), 30, "host 2 running a job")
        moments, inflight, lost = tally.fault("host 2 killed -9"), watch.unfinished(), watch.running_on("host2")
        struck |= inflight
        t0 = time.monotonic()
        moments["processes"] = str(len(host2.kill()))
        moments["its running jobs"] = str(len(lost))
        # Then host 1 shows it dead, and its running jobs succeed on the others
        wait(lambda: host1.state_of("host2") == "dead", 30, "host 2 dead in host 1's GET /hosts")
        moments["dead in host 1's view after"] = since(t0)
        wait(lambda: watch.done(lost), 60, "host 2's running jobs done elsewhere")
        moments["its running jobs succeeded elsewhere after"] = since(t0)
        # When host 2 is started again, it shows alive again
        assert host2.start().returncode == 0
        moments["restarted after"] = since(t0)
        wait(lambda: host1.state_of("host2") == "alive", 30, "host 2 alive again in host 1's view")
        moments["alive in host 1's view after"] = since(t0)
        wait(lambda: watch.done(inflight), 90, "the jobs in flight at host 2's kill")
        moments[f"all {len(inflight)} jobs in flight then succeeded after"] = since(t0)

        # When the broker node holding the most connections is stopped, and later started
        busiest = rabbit.busiest_node()
        moments = tally.fault(f"RabbitMQ node {busiest + 1} stopped")
        moments["connections it held"] = str(len(rabbit.connections(busiest)))
        inflight = watch.unfinished()
        struck |= inflight
        t0 = time.monotonic()
        rabbit.stop_node(busiest)
        moments["stopped in"] = since(t0)
        wait(lambda: watch.done(inflight), 90, "the jobs in flight at the broker node's stop")
        moments[f"all {len(inflight)} jobs in flight then succeeded after"] = since(t0)
        t1 = time.monotonic()
        rabbit.start_node(busiest)
        moments["node booted again in"] = since(t1)

        # When the database writer node is stopped, and later started (it rejoins by IST)
        moments, inflight = tally.fault("Galera node 1 (the writer) stopped"), watch.unfinished()
        struck |= inflight
        t0 = time.monotonic()
        galera.stop_node(0)
        moments["stopped in"] = since(t0)
        wait(lambda: watch.done(inflight), 90, "the jobs in flight at the writer node's stop")
        moments[f"all {len(inflight)} jobs in flight then succeeded after"] = since(t0)
        t1 = time.monotonic()
        galera.start_node(0)
        moments["rejoined and synced in"] = since(t1)

        # When host 3 is cut off (every process stopped) for 30 s, then let go
        wait(lambda: watch.running_on("host3"), 30, "host 3 running a job")
        moments, inflight = tally.fault(f"host 3 cut off {FREEZE_S:.0f} s"), watch.unfinished()
        struck |= inflight
        t0 = time.monotonic()
        frozen = host3.signal_all(signal.SIGSTOP)
        lost = watch.running_on("host3")
        try:
            moments["its running jobs"] = str(len(lost))
            # Then host 1 shows it dead, and the others run what it was running
            wait(lambda: host1.state_of("host3") == "dead", 30, "host 3 dead in host 1's view")
            moments["dead in host 1's view after"] = since(t0)
            wait(lambda: watch.done(lost), FREEZE_S - (time.monotonic() - t0), "host 3's running jobs done elsewhere")
            moments["its running jobs succeeded elsewhere after"] = since(t0)
            time.sleep(max(0.0, FREEZE_S - (time.monotonic() - t0)))
        finally:
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        moments["let go after"] = since(t0)
        wait(lambda: host1.state_of("host3") == "alive", 30, "host 3 alive again in host 1's view")
        moments["alive in host 1's view after"] = since(t0)
        wait(lambda: watch.done(inflight), 90, "the jobs in flight at host 3's cut-off")
        moments[f"all {len(inflight)} jobs in flight then succeeded after"] = since(t0)

        # Then, the rest submitted, every job succeeds
        feeder.released.set()
        feeder.join(120)
        assert feeder.submitted == JOBS and feeder.errors == [], (feeder.submitted, feeder.errors[:5])
        wait(lambda: watch.statuses()["succeeded"] == JOBS, 120, f"all {JOBS} jobs succeeded")
        assert watch.statuses() == Counter(succeeded=JOBS)
        check_each_attempt_recorded_once(dbs, ledger, struck, tally)
    finally:
        feeder.stop.set()
        tally.print()


def check_each_attempt_recorded_once(dbs, ledger: Path, struck: set[int], tally: Tally) -> None:
    """The ledger against the job rows and the analytics events (module docstring)."""
    with dbs.provisioning.connect() as conn:
        attempts = dict(conn.execute(sa.text("SELECT job_id, attempts FROM enstratus_job")).all())
    with dbs.analytics.connect() as conn:
        events = conn.execute(sa.text("SELECT job_id, attempt, outcome FROM enstratus_job_event")).all()
    executions = [tuple(map(int, line.split())) for line in ledger.read_text().splitlines() if line.strip()]
    seen: Counter = Counter(executions)
    duplicates = {key: n - 1 for key, n in seen.items() if n > 1}
    per_attempt = Counter((j, a) for j, a, _ in events)
    succeeded = {j: a for j, a, outcome in events if outcome == "succeeded"}
    tally.counts.update({
        "jobs": len(attempts), "executions": len(executions),
        "re-runs of lost attempts": len(seen) - len(attempts),
        "duplicates": sum(duplicates.values()),
        "jobs with more than one attempt": sum(1 for a in attempts.values() if a > 1),
        "most attempts": max(attempts.values()),
    })
    assert len(attempts) == JOBS
    assert [k for k, n in per_attempt.items() if n > 1] == [], "an attempt with two analytics events"
    assert succeeded == attempts, "each job's one succeeded event is of its last attempt"
    assert sum(1 for _, _, outcome in events if outcome == "succeeded") == JOBS
    assert [(j, a) for j, a in seen if a > attempts.get(j, 0)] == [], "an execution of no recorded attempt"
    assert all((j, a) in seen for j, a in attempts.items()), "a job's last attempt never ran"
    assert set(j for j, _ in duplicates) <= struck, f"duplicates of jobs no fault touched: {duplicates}"
