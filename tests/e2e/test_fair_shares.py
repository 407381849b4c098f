"""Fair shares and pauses through the real daemons, on RabbitMQ + MariaDB: an account that comes
later is not held back by another's backlog (the backlog waits in the outbox, all but a window
of it, and the accounts take turns there), and a paused account's jobs wait in the outbox,
those already on the broker given back, none lost and no attempt counted, until resumed.

Only a publisher and a subscriber run (no pinger, no admin daemon): started by pid file and
killed by pid afterwards, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BIN = sh.REPO / "services" / "worker" / "bin"


def daemon(home: Path, which: str, verb: str) -> None:
    r = subprocess.run([str(BIN / which), verb, "--name", "f"], env=sh.env_for(home),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def service(tmp_path, amqp_names, mysql_url):
    """A home on RabbitMQ + MariaDB with the shipped window and weights; its databases open."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    home = sh.make_home(tmp_path, amqp=amqp_names, mysql_url=mysql_url)
    settings = load_settings(Layout(home))
    dbs = open_databases(settings.worker, Layout(home))
    try:
        yield home, settings, dbs
    finally:
        dbs.close()
        for pid in sh.our_processes(home):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def consuming(dbs) -> bool:
    return any(hb.daemon == "subscriber" and hb.details.get("connected") for hb in dbs.heartbeats.all())


def submit(settings, dbs, account: str, n: int) -> list[int]:
    """``n`` no-op jobs of ``account``, through submit's validation, in one transaction (as the
    bulk API stores a list): the backlog is there at once, not trickling in while it is worked."""
    from enstratus_workers.jobs.submit import new_job

    with dbs.provisioning.connect() as conn:
        before = conn.execute(sa.text("SELECT COALESCE(MAX(job_id), 0) FROM enstratus_job")).scalar()
    dbs.jobs.submit_many([new_job(settings, "noop", account=account) for _ in range(n)])
    with dbs.provisioning.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT job_id FROM enstratus_job WHERE job_id > :b AND account = :a ORDER BY job_id"),
            {"b": before, "a": account}).scalars())


def rows(dbs, ids) -> list:
    with dbs.provisioning.connect() as conn:
        return conn.execute(sa.text(
            f"SELECT job_id, account, status, attempts, end_timestamp FROM enstratus_job "
            f"WHERE job_id IN ({', '.join(map(str, ids))})")).all()


def test_an_account_that_comes_later_finishes_before_the_backlog_it_came_behind(service):
    home, settings, dbs = service
    window = settings.publisher.window
    # Given account A's 2,000 short jobs, relayed by the publisher as far as it would before
    # any worker ran: the shipped window, not the backlog (without it, all 2,000 would be on
    # the broker, and B's jobs behind them)
    daemon(home, "publisher", "start")
    a = submit(settings, dbs, "A", 2000)
    assert sh.wait_until(lambda: dbs.jobs.counts()["queued"] >= window, 30, interval=0.2), dbs.jobs.counts()
    assert dbs.jobs.counts()["queued"] == window
    # When account B submits 20 after them, and the subscriber starts
    b = submit(settings, dbs, "B", 20)
    daemon(home, "subscriber", "start")
    # Then all of them succeed
    assert sh.wait_until(lambda: dbs.jobs.counts()["succeeded"] == 2020, 90, interval=0.5), dbs.jobs.counts()
    # And every job of B had finished before the 500th of A (ties in the ms go to A)
    ended = sorted(rows(dbs, a + b), key=lambda r: (r.end_timestamp, -r.job_id))
    last_b = max(i for i, r in enumerate(ended) if r.account == "B")
    a_500th = [i for i, r in enumerate(ended) if r.account == "A"][499]
    assert last_b < a_500th, f"B's last job ended {last_b + 1}th, A's 500th {a_500th + 1}th"
    print(f"B's last job ended {last_b + 1}th of 2020 ({last_b + 1 - 19} jobs of A before it)")


def test_a_paused_accounts_jobs_wait_in_the_outbox_and_none_is_lost_or_counted(service):
    home, settings, dbs = service
    # Given jobs of accounts X and Y relayed to the broker while no subscriber runs
    daemon(home, "publisher", "start")
    on_broker_x, y = submit(settings, dbs, "X", 30), submit(settings, dbs, "Y", 30)
    assert sh.wait_until(lambda: dbs.jobs.counts()["queued"] == 60, 30, interval=0.2), dbs.jobs.counts()
    # When X is paused, more of its jobs come, and the subscriber starts
    assert sh.cli(home, "pause", "--account", "X").returncode == 0
    pending_x = submit(settings, dbs, "X", 30)
    daemon(home, "subscriber", "start")
    # Then Y's jobs run, X's on the broker come back to the outbox and X's new ones stay there
    assert sh.wait_until(lambda: {r.status for r in rows(dbs, y)} == {"succeeded"}, 60, interval=0.2)
    assert sh.wait_until(lambda: {r.status for r in rows(dbs, on_broker_x)} == {"pending"}, 30, interval=0.2)
    xs = rows(dbs, on_broker_x + pending_x)
    assert {(r.status, r.attempts) for r in xs} == {("pending", 0)} and len(xs) == 60
    # When X is resumed
    assert sh.cli(home, "resume", "--account", "X").returncode == 0
    # Then all of X's jobs succeed, each at its first attempt, with one event each
    assert sh.wait_until(lambda: {r.status for r in rows(dbs, on_broker_x + pending_x)} == {"succeeded"},
                         60, interval=0.2)
    assert {r.attempts for r in rows(dbs, on_broker_x + pending_x)} == {1}
    for job_id in on_broker_x[:5]:
        assert [e.outcome for e in dbs.events.for_job(job_id)] == ["succeeded"]
    # And the subscriber counted what it gave back
    beats = [hb.details for hb in dbs.heartbeats.all() if hb.daemon == "subscriber"]
    assert sh.wait_until(lambda: [hb.details["stats"]["given_back"] for hb in dbs.heartbeats.all()
                                  if hb.daemon == "subscriber"] == [30], 10, interval=0.5), beats
