"""On a real MariaDB: under a backlog, an outcome whose row another transaction holds (the
publisher's pass that relayed it, still open) does not hold up the rest of its group: it stays
buffered and unacked, and is written once the row is free."""

from __future__ import annotations

import threading

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.daemons.subscriber.recorder import SKIP_LOCKED_FROM, Recorder
from enstratus_workers.db import Event, NewJob, Outcome, open_databases
from enstratus_workers.layout import Layout


@pytest.fixture
def dbs(mysql_url, tmp_path):
    d = open_databases(WorkerSettings(provisioning_url=Secret(mysql_url), analytics_url=Secret(mysql_url)),
                       Layout(tmp_path))
    yield d
    d.close()


def _queued(dbs, n):
    dbs.jobs.submit_many([NewJob("noop", "{}", "default", 3)] * n)
    dbs.jobs.relay_pending(n, lambda batch: None)
    return sorted(j.job_id for j in dbs.jobs.list(limit=n))


def _finish(rec, job_id):
    rec.finished(Outcome(job_id, 1, "succeeded", "w", 1, 2, "null", None),
                 Event(job_id, "noop", "default", 1, "succeeded", 1, "w", 2), [f"d{job_id}"])


def _holding_rows(dbs, ids):
    """Another transaction with these rows locked, as a publisher's open pass holds its rows."""
    conn = dbs.provisioning.connect()
    tx = conn.begin()
    conn.exec_driver_sql(f"SELECT job_id FROM enstratus_job WHERE job_id IN ({', '.join(map(str, ids))}) FOR UPDATE")
    return conn, tx


def test_a_backlog_writes_around_rows_locked_elsewhere_and_writes_them_once_free(dbs):
    # Given a backlog of finished jobs, two of whose rows another transaction holds locked
    ids = _queued(dbs, SKIP_LOCKED_FROM + 8)
    locked = [ids[3], ids[-1]]
    conn, tx = _holding_rows(dbs, locked)
    acked = []
    rec = Recorder(dbs, batch=500, interval=0, on_recorded=acked.extend)
    try:
        for i in ids:
            _finish(rec, i)
        # When the recorder writes them (the lock wait timeout is far longer than this write)
        first = rec.flush()
        # Then every other outcome is recorded with its event and acked, the two are neither,
        # and they are due again shortly
        assert sorted(first) == sorted(f"d{i}" for i in ids if i not in locked)
        assert all(dbs.jobs.get(i).status == "succeeded" for i in ids if i not in locked)
        assert [dbs.jobs.get(i).status for i in locked] == ["queued", "queued"]
        assert [dbs.events.for_job(i) for i in locked] == [[], []]
        assert rec.waiting == 2 and rec.due_in() is not None and rec.due_in() < 1
    finally:
        tx.rollback()
        conn.close()
    # And once the rows are free, the next write records and acks them, each once
    assert sorted(rec.flush()) == sorted(f"d{i}" for i in locked)
    assert [dbs.jobs.get(i).status for i in locked] == ["succeeded", "succeeded"]
    assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
    assert rec.waiting == 0 and dbs.jobs.counts()["succeeded"] == len(ids)
    assert sorted(acked) == sorted(f"d{i}" for i in ids)


def test_a_few_outcomes_wait_for_a_locked_row_as_before(dbs):
    # Given fewer finished jobs than a backlog, one of whose rows is locked for a moment
    ids = _queued(dbs, 3)
    conn, tx = _holding_rows(dbs, [ids[0]])
    rec = Recorder(dbs, batch=500, interval=0)
    for i in ids:
        _finish(rec, i)
    release = threading.Timer(0.3, lambda: (tx.rollback(), conn.close()))
    release.start()
    try:
        # When they are written: the write waits for the lock, then takes all three
        acks = rec.flush()
    finally:
        release.join()
    assert sorted(acks) == sorted(f"d{i}" for i in ids) and rec.waiting == 0
