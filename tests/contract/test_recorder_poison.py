"""On a real MariaDB: no outcome the database refuses, and no result too large for it, holds up
the rest of its batch; a database that is not there holds everything and fails nothing."""

from __future__ import annotations

import time

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.daemons.subscriber.recorder import (
    GROUP_CHARS,
    RESULT_CAP,
    Recorder,
)
from enstratus_workers.db import Event, NewJob, Outcome, open_databases
from enstratus_workers.layout import Layout


@pytest.fixture
def dbs(mariadb_dbs):
    return mariadb_dbs


def _queued(dbs, n):
    dbs.jobs.submit_many([NewJob("noop", "{}", "default", 3)] * n)
    dbs.jobs.relay_pending(n, lambda batch: None)
    return sorted(j.job_id for j in dbs.jobs.list(limit=n))


def _finish(rec, job_id, **kw):
    o = dict(attempt=1, status="succeeded", worker="w", start_ms=1, end_ms=2, result="null", error=None)
    o.update(kw)
    rec.finished(Outcome(job_id, **o), Event(job_id, "noop", "default", 1, "succeeded", 1, "w", 2), [f"d{job_id}"])


def test_a_result_over_16_mib_fails_its_job_and_the_other_49_are_recorded(dbs):
    # Given 50 finished jobs, one of whose results is over MariaDB's 16 MiB max_allowed_packet
    ids = _queued(dbs, 50)
    big_id = ids[17]
    big = '"' + "x" * (17 << 20) + '"'
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        _finish(rec, i, result=big if i == big_id else '{"ok": true}')
    # When the batch is written
    t0 = time.monotonic()
    acks = rec.flush()
    took = time.monotonic() - t0
    # Then all 50 are acked, 49 succeeded, and the big one failed saying how big it was
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert dbs.jobs.counts()["succeeded"] == 49
    job = dbs.jobs.get(big_id)
    assert (job.status, job.result) == ("failed", None)
    assert job.error == f"result too large ({len(big)} bytes; the cap is {RESULT_CAP})"
    assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
    assert rec.write_error is None and rec.waiting == 0
    print(f"50 outcomes, one of {len(big) >> 20} MiB, recorded in {took * 1000:.0f} ms")


def test_values_mariadb_refuses_fail_only_their_own_jobs(dbs):
    # Given 50 finished jobs, two with values MariaDB refuses (a worker name longer than its
    # column, an error that is no UTF-8), and one for an attempt no row is at (2**40: decode
    # dead-letters such messages, so only a bug could bring one here)
    ids = _queued(dbs, 50)
    long_worker, bad_text, far_attempt = ids[3], ids[25], ids[40]
    dead = []
    rec = Recorder(dbs, batch=100, interval=0, on_dead=lambda d, why: dead.append((d, why)))
    for i in ids:
        if i == long_worker:
            _finish(rec, i, worker="w" * 300)
        elif i == bad_text:
            _finish(rec, i, status="pending", result=None, error="boom \udc80")
        elif i == far_attempt:
            _finish(rec, i, attempt=2 ** 40)
        else:
            _finish(rec, i)
    # When the batch is written
    acks = rec.flush()
    # Then the 47 others succeeded and every delivery is settled by an ack
    assert dbs.jobs.counts()["succeeded"] == 47
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    # And the two that could be recorded as failures say why the database refused them
    worker_job, text_job = dbs.jobs.get(long_worker), dbs.jobs.get(bad_text)
    assert worker_job.status == "failed" and "Data too long for column 'worker'" in worker_job.error
    assert worker_job.error.startswith("could not record the outcome: ")
    assert text_job.status == "failed" and "UnicodeEncodeError" in text_job.error
    # And the outcome of an attempt the row is not at took no effect: a stale duplicate, acked
    # away with no event, its job left as it was
    assert dbs.jobs.get(far_attempt).status == "queued" and dead == []
    assert dbs.events.for_job(far_attempt) == []
    assert rec.refused == 2 and rec.waiting == 0


def test_many_large_results_are_written_in_several_statements_under_the_packet_limit(dbs, monkeypatch):
    # Given 20 finished jobs with results just under the cap: 18 MiB together, over one packet
    ids = _queued(dbs, 20)
    result = '"' + "y" * (RESULT_CAP - 100_000) + '"'
    writes = []
    real = dbs.jobs.record_outcomes_with   # record_outcomes too; with their events on one database
    monkeypatch.setattr(dbs.jobs, "record_outcomes_with", lambda os_, also=None: (
        writes.append(sum(len(o.result or "") for o in os_)), real(os_, also))[1])
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        _finish(rec, i, result=result)
    # When the batch is written
    acks = rec.flush()
    # Then every job succeeded with its result, in writes each within the budget, none refused
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert dbs.jobs.counts()["succeeded"] == 20 and dbs.jobs.get(ids[-1]).result == result
    assert len(writes) >= (20 * len(result)) // GROUP_CHARS and max(writes) <= GROUP_CHARS
    assert rec.refused == 0


def test_a_mariadb_that_is_not_there_holds_everything_and_fails_nothing(mysql_server, tmp_path):
    # Given a recorder whose provisioning database is a MariaDB port nothing listens on
    url = "mysql+pymysql://root@127.0.0.1:1/nothing"
    dbs = open_databases(WorkerSettings(provisioning_url=Secret(url), analytics_url=Secret("sqlite://")),
                         Layout(tmp_path), ensure=False)
    calls = []
    real = dbs.jobs.record_outcomes
    dbs.jobs.record_outcomes = lambda os_: (calls.append(len(os_)), real(os_))[1]
    rec = Recorder(dbs, batch=100, interval=0)
    try:
        for i in range(1, 51):
            _finish(rec, i)
        # When the batch is written twice
        assert rec.flush() == []
        rec.retry_at = 0
        assert rec.flush() == []
        # Then each round was one write (a refused connection is an outage, not 50 bad outcomes),
        # everything is held unacked, and the reason is reported
        assert calls == [50, 50] and rec.waiting == 50 and rec.refused == 0
        assert "Connection refused" in rec.write_error
    finally:
        dbs.close()
