"""The held connections (``db/held_connection.py``) on a real MariaDB: the subscriber's for the
delivery check (each check reads the rows committed since the last one; a connection the server
dropped is replaced within the same check) and the publisher's for its relay passes (a pass's
transaction on it; a dropped one fails that pass alone, or is found by its ping first)."""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db.held_connection import HeldConnection
from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.layout import Layout
from tests.servicehome import wait_until


def _dbs(url, tmp_path):
    return open_databases(WorkerSettings(provisioning_url=Secret(url), analytics_url=Secret(url)), Layout(tmp_path))


def test_each_check_on_the_held_connection_reads_what_was_committed_since(mysql_url, tmp_path):
    dbs = _dbs(mysql_url, tmp_path)
    held = HeldConnection(dbs.provisioning)
    try:
        # Given a check made on the held connection
        [first] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
        assert held.holds
        assert set(held.run(lambda conn: dbs.jobs.delivery_rows([first.job_id], conn))) == {first.job_id}
        # When another job is committed and the first changes
        [second] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
        dbs.jobs.relay_pending(10, lambda jobs: None)
        # Then the next check sees both as they are now (no snapshot kept from the first read)
        rows = held.run(lambda conn: dbs.jobs.delivery_rows([first.job_id, second.job_id], conn))
        assert {i: r.status for i, r in rows.items()} == {first.job_id: "queued", second.job_id: "queued"}
        # and it holds no pool connection back from the other threads beyond its own
        assert dbs.provisioning.pool.checkedout() == 1
    finally:
        held.close()
        dbs.close()


def test_a_held_connection_the_server_dropped_is_replaced_within_the_check(mysql_url, tmp_path):
    dbs = _dbs(mysql_url, tmp_path)
    held = HeldConnection(dbs.provisioning)
    try:
        [job] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
        thread_id = held.run(lambda conn: conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar())
        # When the server kills the held connection (as a restart or wait_timeout would)
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        try:
            admin.cursor().execute(f"KILL {int(thread_id)}")
        finally:
            admin.close()
        # Then the next check still reads the row, on a new connection
        assert set(held.run(lambda conn: dbs.jobs.delivery_rows([job.job_id], conn))) == {job.job_id}
        assert held.replaced == 1
        assert held.run(lambda conn: conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()) != thread_id
    finally:
        held.close()
        dbs.close()


def test_sqlite_checks_on_a_pool_connection_each_time(tmp_path):
    dbs = open_databases(WorkerSettings(), Layout(tmp_path))
    held = HeldConnection(dbs.provisioning)
    try:
        [job] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
        # SQLite's BEGIN takes the write lock: a held connection would keep the others out
        assert not held.holds
        assert held.run(lambda conn: conn) is None
        assert set(held.run(lambda conn: dbs.jobs.delivery_rows([job.job_id], conn))) == {job.job_id}
        assert dbs.provisioning.pool.checkedout() == 0
    finally:
        held.close()
        dbs.close()


def _kill(thread_id: int) -> None:
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        admin.cursor().execute(f"KILL {int(thread_id)}")
    finally:
        admin.close()


def _connection_id(held) -> int:
    """The server's id of the held connection, read in a transaction of its own."""
    def read(conn):
        with conn.begin():
            return conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    return held.run(read)


def _relay(dbs, held, seen: list, publish=None):
    """One publisher pass (no window) on ``held``, recording what it published."""
    from enstratus_workers.jobs.fairshare import FairShare
    return held.run(lambda conn: dbs.jobs.relay(FairShare(), 100, publish or seen.extend, conn))


@pytest.fixture
def passes(mysql_url, tmp_path):
    """The databases, a publisher's held connection and one pending job; closed after."""
    dbs = _dbs(mysql_url, tmp_path)
    held = HeldConnection(dbs.provisioning, autocommit=False, retry=False)
    [job] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
    try:
        yield dbs, held, job
    finally:
        held.close()
        dbs.close()


def test_the_publishers_passes_run_on_one_held_connection_and_keep_their_lock(passes):
    dbs, held, a = passes
    # Given the job relayed by a pass on the held connection, and another job submitted
    seen: list = []
    assert _relay(dbs, held, seen).relayed == 1
    ids = {_connection_id(held)}
    [b] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])

    # When another publisher's pass (on the pool) runs while this pass publishes
    others: list = []

    def publish_while_another_pass_runs(jobs):
        others.append(dbs.jobs.relay_pending(100, lambda js: others.extend(js)))
        seen.extend(jobs)

    assert _relay(dbs, held, seen, publish_while_another_pass_runs).relayed == 1
    ids.add(_connection_id(held))
    # Then the other pass found the row locked (nothing relayed twice), both passes ran on
    # the one connection, and between passes no transaction was left open on it
    assert others == [0] and [j.job_id for j in seen] == [a.job_id, b.job_id] and len(ids) == 1
    assert [dbs.jobs.get(i).status for i in (a.job_id, b.job_id)] == ["queued", "queued"]
    assert not held.run(lambda conn: conn.in_transaction())


def test_a_failed_pass_leaves_its_jobs_pending_and_the_held_connection_usable(passes):
    from enstratus_workers.errors import PublishError
    dbs, held, job = passes

    def refused(jobs):
        raise PublishError("nacked", [str(j.job_id) for j in jobs])

    # When the broker refuses the pass's publish
    with pytest.raises(PublishError):
        _relay(dbs, held, [], refused)
    # Then the job is pending again, and the next pass on the same connection relays it,
    # even after a use that left a transaction open on it
    assert dbs.jobs.get(job.job_id).status == "pending"
    held.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
    assert not held.run(lambda conn: conn.in_transaction())   # the held connection ended it
    seen: list = []
    assert _relay(dbs, held, seen).relayed == 1 and [j.job_id for j in seen] == [job.job_id]
    assert held.replaced == 0


def test_a_dropped_held_connection_fails_one_pass_and_the_next_relays_once(passes, monkeypatch):
    from enstratus_workers.db import held_connection
    dbs, held, job = passes
    thread_id = _connection_id(held)
    # When the server kills it just after its last use (no ping is due yet, however slow this runs)
    monkeypatch.setattr(held_connection, "IDLE_PING_S", 3600.0)
    _kill(thread_id)
    seen: list = []
    # Then that pass fails as a lost connection, not retried (it may have published)...
    with pytest.raises(sa.exc.DBAPIError):
        _relay(dbs, held, seen)
    assert held.replaced == 1 and seen == []
    # ...and the next one relays the job once, on a new connection
    assert _relay(dbs, held, seen).relayed == 1 and [j.job_id for j in seen] == [job.job_id]
    assert _connection_id(held) != thread_id


def test_a_held_connection_left_unused_is_pinged_and_replaced_before_the_pass(passes, monkeypatch):
    from enstratus_workers.db import held_connection
    dbs, held, job = passes
    # Given the connection unused for longer than the pool's idle ping (a restart meanwhile)
    _kill(_connection_id(held))
    monkeypatch.setattr(held_connection, "IDLE_PING_S", -1.0)
    # Then the next pass finds it dead by its ping, and relays on a new one without failing
    seen: list = []
    assert _relay(dbs, held, seen).relayed == 1 and [j.job_id for j in seen] == [job.job_id]
    assert held.replaced == 1


def test_the_publishers_passes_borrow_the_pools_connection_on_sqlite(tmp_path):
    dbs = open_databases(WorkerSettings(), Layout(tmp_path))
    held = HeldConnection(dbs.provisioning, autocommit=False, retry=False)
    try:
        [job] = dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 1)])
        seen: list = []
        assert not held.holds and _relay(dbs, held, seen).relayed == 1
        assert [j.job_id for j in seen] == [job.job_id] and dbs.provisioning.pool.checkedout() == 0
    finally:
        held.close()
        dbs.close()


@pytest.mark.parametrize("autocommit", [True, False], ids=["delivery check", "relay pass"])
def test_a_held_connection_is_replaced_at_its_age_between_uses_not_within_one(mysql_url, tmp_path, autocommit):
    import time

    dbs = _dbs(mysql_url, tmp_path)
    held = HeldConnection(dbs.provisioning, autocommit=autocommit, retry=autocommit)
    held.max_age_s = 0.5
    try:
        # Given a connection held, and used again while young: the same one
        first = _connection_id(held)
        assert _connection_id(held) == first and held.recycled == 0
        # When a use runs past the connection's age, Then it keeps its connection to the end
        def slow(conn):
            before = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            time.sleep(0.7)
            return before, conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        assert held.run(slow) == (first, first)
        # and the next use is on a new connection; the old one is closed on the server, not
        # lent to another thread, and the held one is the only one checked out
        second = _connection_id(held)
        assert second != first and held.recycled == 1 and held.replaced == 0
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        try:
            cur = admin.cursor()

            def listed() -> int:   # (the server ends a closed connection's thread a moment later)
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (first,))
                return cur.fetchone()[0]
            assert wait_until(lambda: listed() == 0, 5)
        finally:
            admin.close()
        assert dbs.provisioning.pool.checkedout() == 1
    finally:
        held.close()
        dbs.close()
