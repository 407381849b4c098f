"""The subscriber's held connection for the delivery check (``daemons/subscriber/held_connection.py``)
on a real MariaDB: each check reads the rows committed since the last one, and a connection the
server dropped is replaced within the same check."""

from __future__ import annotations

import pymysql

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.daemons.subscriber.held_connection import HeldConnection
from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.layout import Layout


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
