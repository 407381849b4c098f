"""The recorder acks only what is written, keeps what is not, and batches its writes."""

from __future__ import annotations

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import Event, NewJob, Outcome, Started, open_databases
from enstratus_workers.errors import DatabaseError
from enstratus_workers.layout import Layout
from enstratus_workers.recorder import Recorder


@pytest.fixture
def dbs(tmp_path):
    d = open_databases(WorkerSettings(), Layout(tmp_path))
    yield d
    d.close()


def _queued_jobs(dbs, n):
    dbs.jobs.submit_many([NewJob("noop", "{}", "default", 3)] * n)
    dbs.jobs.relay_pending(n, lambda batch: None)
    return [j.job_id for j in dbs.jobs.list(limit=n)][::-1]


def _finish(rec, job_id, delivery):
    rec.finished(Outcome(job_id, 1, "succeeded", "w", 1, 2, "null", None),
                 Event(job_id, "noop", "default", 1, "succeeded", 1, "w", 2), [delivery])


def test_flush_writes_outcomes_and_events_then_releases_deliveries(dbs):
    ids = _queued_jobs(dbs, 3)
    rec = Recorder(dbs, batch=100, interval=0.01)
    for i in ids:
        _finish(rec, i, f"delivery-{i}")
    acks = rec.flush()
    assert acks == [f"delivery-{i}" for i in ids]
    assert dbs.jobs.counts()["succeeded"] == 3
    assert len(dbs.events.for_job(ids[0])) == 1
    assert rec.due_in() is None and rec.waiting == 0


def test_a_full_batch_is_due_at_once_and_a_partial_one_after_the_interval(dbs):
    ids = _queued_jobs(dbs, 2)
    rec = Recorder(dbs, batch=2, interval=60)
    _finish(rec, ids[0], "d0")
    assert rec.due_in() > 1
    _finish(rec, ids[1], "d1")
    assert rec.due_in() == 0


def test_started_marks_are_written_for_jobs_still_running(dbs):
    (jid,) = _queued_jobs(dbs, 1)
    rec = Recorder(dbs, batch=10, interval=0, mark_running_after=0)
    rec.started(Started(jid, 1, "w@h.1", 123))
    assert rec.flush() == []
    job = dbs.jobs.get(jid)
    assert (job.status, job.worker, job.start_timestamp) == ("running", "w@h.1", 123)


def test_database_failure_keeps_everything_unacked_until_it_is_back(dbs, monkeypatch):
    ids = _queued_jobs(dbs, 2)
    rec = Recorder(dbs, batch=10, interval=0)
    for i in ids:
        _finish(rec, i, f"d{i}")
    real = dbs.jobs.record_outcomes

    def down(outcomes):
        raise DatabaseError("database is down")

    # Given the provisioning database is down
    monkeypatch.setattr(dbs.jobs, "record_outcomes", down)
    # Then nothing is released for acking, and a retry is scheduled with backoff
    assert rec.flush() == []
    assert rec.waiting == 2 and rec.due_in() > 0
    # When it is back, the same outcomes are written once and released
    monkeypatch.setattr(dbs.jobs, "record_outcomes", real)
    rec.retry_at = 0
    assert sorted(rec.flush()) == sorted(f"d{i}" for i in ids)
    assert dbs.jobs.counts()["succeeded"] == 2


def test_analytics_failure_does_not_rewrite_outcomes(dbs, monkeypatch):
    (jid,) = _queued_jobs(dbs, 1)
    rec = Recorder(dbs, batch=10, interval=0)
    _finish(rec, jid, "d")
    calls = []
    real_record = dbs.jobs.record_outcomes
    monkeypatch.setattr(dbs.jobs, "record_outcomes", lambda o: (calls.append(len(o)), real_record(o)))
    real_events = dbs.events.record
    monkeypatch.setattr(dbs.events, "record", lambda e: (_ for _ in ()).throw(DatabaseError("analytics down")))
    assert rec.flush() == []
    monkeypatch.setattr(dbs.events, "record", real_events)
    rec.retry_at = 0
    assert rec.flush() == ["d"]
    assert calls == [1]   # the outcome was written once; only the event was retried
    assert len(dbs.events.for_job(jid)) == 1


def test_a_short_job_gets_one_write_not_a_running_mark_first(dbs, monkeypatch):
    (jid,) = _queued_jobs(dbs, 1)
    marks = []
    monkeypatch.setattr(dbs.jobs, "mark_started", lambda started: marks.append(started))
    rec = Recorder(dbs, batch=10, interval=0, mark_running_after=5)
    rec.started(Started(jid, 1, "w@h.1", 123))
    _finish(rec, jid, "d")
    assert rec.flush() == ["d"] and marks == []


def test_the_thread_writes_and_hands_deliveries_to_on_recorded(dbs):
    import threading
    ids = _queued_jobs(dbs, 3)
    acked, done = [], threading.Event()
    rec = Recorder(dbs, batch=100, interval=0.01,
                   on_recorded=lambda ds: (acked.extend(ds), len(acked) == 3 and done.set()))
    rec.start()
    for i in ids:
        _finish(rec, i, f"d{i}")
    assert done.wait(5)
    rec.stop()
    assert sorted(acked) == sorted(f"d{i}" for i in ids) and dbs.jobs.counts()["succeeded"] == 3
