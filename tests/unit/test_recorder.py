"""The recorder acks only what is written, keeps what is not, and batches its writes."""

from __future__ import annotations

import pytest

from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.daemons.subscriber.recorder import Recorder
from enstratus_workers.db import Event, NewJob, Outcome, Started, open_databases
from enstratus_workers.errors import DatabaseError
from enstratus_workers.layout import Layout


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
    monkeypatch.setattr(dbs.jobs, "record_outcomes", lambda o: (calls.append(len(o)), real_record(o))[1])
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



def test_the_thread_outlives_an_unexpected_error_after_a_write(dbs):
    import threading
    ids = _queued_jobs(dbs, 2)
    acked, second = [], threading.Event()

    def on_recorded(deliveries):
        acked.extend(deliveries)
        if len(acked) == 1:
            raise RuntimeError("an ack that fails in a way nobody expected")
        second.set()

    rec = Recorder(dbs, batch=1, interval=0.01, on_recorded=on_recorded)
    rec.start()
    try:
        # Given a first outcome whose hand-over raises after it was written
        _finish(rec, ids[0], "d1")
        assert second.wait(0.3) is False and acked == ["d1"]
        # Then the thread lives on, reports the failure, and records the next outcome
        assert rec._thread.is_alive() and rec.failures == 1
        _finish(rec, ids[1], "d2")
        assert second.wait(10) and acked == ["d1", "d2"]
        assert dbs.jobs.counts()["succeeded"] == 2 and rec.failures == 0
    finally:
        rec.stop()

# --- no item can hold up the others -------------------------------------------------------------

def _outcome(job_id, **kw):
    o = dict(attempt=1, status="succeeded", worker="w", start_ms=1, end_ms=2, result="null", error=None)
    o.update(kw)
    return Outcome(job_id, **o)


def _event(job_id, worker="w"):
    return Event(job_id, "noop", "default", 1, "succeeded", 1, worker, 2)


def _counting(monkeypatch, store, name):
    """Count the calls of ``store.name`` (and what each got), letting them through."""
    calls, real = [], getattr(store, name)

    def spy(items):
        calls.append(list(items))
        return real(items)

    monkeypatch.setattr(store, name, spy)
    return calls


def _finished(dbs, n):
    """``n`` queued jobs finished in a new recorder, each with its delivery ``d<id>``."""
    ids = _queued_jobs(dbs, n)
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        _finish(rec, i, f"d{i}")
    return ids, rec


def _finished_but_refused(dbs, monkeypatch, n, error):
    """``n`` finished jobs in a recorder whose every outcome write raises ``error`` (and is counted)."""
    ids, rec = _finished(dbs, n)
    calls = []

    def refuse(outcomes):
        calls.append(len(outcomes))
        raise error

    monkeypatch.setattr(dbs.jobs, "record_outcomes", refuse)
    return ids, rec, calls


def test_an_outcome_the_database_refuses_fails_its_job_and_the_others_are_recorded(dbs):
    # Given ten finished jobs, one of whose error text SQLite cannot store (a lone surrogate)
    ids = _queued_jobs(dbs, 10)
    bad = ids[4]
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        o = _outcome(i, status="pending", result=None, error="boom \udc80") if i == bad else _outcome(i)
        rec.finished(o, _event(i), [f"d{i}"])
    # When the batch is written
    acks = rec.flush()
    # Then every delivery is acked, the nine others succeeded, and the refused one failed with why
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert dbs.jobs.counts()["succeeded"] == 9
    job = dbs.jobs.get(bad)
    assert job.status == "failed" and job.result is None
    assert job.error.startswith("could not record the outcome: UnicodeEncodeError")
    # And each job has its event, the refused one's saying it failed
    assert [e.outcome for e in dbs.events.for_job(bad)] == ["failed"]
    assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
    assert rec.refused == 1 and rec.write_error is None and rec.waiting == 0


def test_an_outcome_refused_even_as_a_bare_failure_is_dead_lettered_with_the_reason(dbs):
    # Given three finished jobs, one claiming an attempt number SQLite cannot hold
    ids = _queued_jobs(dbs, 3)
    dead = []
    rec = Recorder(dbs, batch=100, interval=0, on_dead=lambda d, why: dead.append((d, why)))
    for i in ids:
        rec.finished(_outcome(i, attempt=2 ** 70 if i == ids[1] else 1), _event(i), [f"d{i}"])
    # When the batch is written
    acks = rec.flush()
    # Then the two others are recorded and acked, and the third's message is dead-lettered with why
    assert sorted(acks) == [f"d{ids[0]}", f"d{ids[2]}"]
    assert dbs.jobs.counts()["succeeded"] == 2
    assert [d for d, _ in dead] == [f"d{ids[1]}"] and "OverflowError" in dead[0][1]
    assert rec.waiting == 0


def test_a_result_over_the_cap_fails_the_job_and_is_never_sent_to_the_database(dbs, monkeypatch):
    from enstratus_workers.daemons.subscriber.recorder import RESULT_CAP
    # Given two finished jobs, one whose result is one byte over the cap (é is two bytes)
    ids = _queued_jobs(dbs, 2)
    big = '"' + "é" * (RESULT_CAP // 2) + '"'
    size = len(big.encode())
    assert size == RESULT_CAP + 2
    calls = _counting(monkeypatch, dbs.jobs, "record_outcomes")
    rec = Recorder(dbs, batch=100, interval=0)
    rec.finished(_outcome(ids[0], result=big), _event(ids[0]), ["big"])
    rec.finished(_outcome(ids[1]), _event(ids[1]), ["small"])
    # When the batch is written
    assert sorted(rec.flush()) == ["big", "small"]
    # Then the big one failed, without its result, saying how large it was, in one write
    job = dbs.jobs.get(ids[0])
    assert (job.status, job.result) == ("failed", None)
    assert job.error == f"result too large ({size} bytes; the cap is {RESULT_CAP})"
    assert dbs.jobs.get(ids[1]).status == "succeeded"
    assert len(calls) == 1 and all(o.result != big for o in calls[0])


def test_an_error_text_longer_than_its_column_is_cut_not_refused(dbs):
    from enstratus_workers.daemons.subscriber.recorder import ERROR_CAP
    # Given a retryable failure with a huge traceback as its error
    (jid,) = _queued_jobs(dbs, 1)
    rec = Recorder(dbs, batch=10, interval=0)
    rec.finished(_outcome(jid, status="pending", result=None, error="x" * (ERROR_CAP * 3)), _event(jid), ["d"])
    # When it is written
    assert rec.flush() == ["d"]
    # Then the job stays retryable, with the start of the error and how long it was
    job = dbs.jobs.get(jid)
    assert job.status == "pending" and len(job.error) == ERROR_CAP
    assert job.error.endswith(f"(cut: {ERROR_CAP * 3} characters)")


def test_an_outage_holds_everything_unacked_and_tries_few_writes_per_round(dbs, monkeypatch):
    from enstratus_workers.daemons.subscriber.recorder import PROBES
    # Given fifty finished jobs and a database that refuses every write
    ids, rec, calls = _finished_but_refused(dbs, monkeypatch, 50, DatabaseError("disk full"))
    # When it is written twice
    assert rec.flush() == []
    rec.retry_at = 0
    assert rec.flush() == []
    # Then nothing is acked or failed, each round cost at most 2 * PROBES writes, and the
    # reason is reported once the writes keep failing
    assert rec.waiting == 50 and dbs.jobs.counts()["failed"] == 0
    assert len(calls) <= 2 * 2 * PROBES
    assert "disk full" in rec.write_error
    # When the database is back
    monkeypatch.undo()
    rec.retry_at = 0
    # Then all fifty are recorded and acked, in the order they came, and the report clears
    assert rec.flush() == [f"d{i}" for i in ids]
    assert dbs.jobs.counts()["succeeded"] == 50 and rec.write_error is None


def test_a_lost_connection_is_an_outage_at_once_without_narrowing(dbs, monkeypatch):
    import sqlalchemy as sa
    # Given ten finished jobs and a database whose connection drops
    lost = DatabaseError("could not record")
    lost.__cause__ = sa.exc.OperationalError(
        "UPDATE", (), Exception(2013, "Lost connection to MySQL server during query"))
    ids, rec, calls = _finished_but_refused(dbs, monkeypatch, 10, lost)
    # When the batch is written
    assert rec.flush() == []
    # Then it was tried once, and everything is held
    assert calls == [10] and rec.waiting == 10


def test_a_refused_event_is_dropped_and_counted_the_others_written(dbs):
    # Given five finished jobs, one of whose events SQLite cannot store
    ids = _queued_jobs(dbs, 5)
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        rec.finished(_outcome(i), _event(i, worker="w\udc80" if i == ids[2] else "w"), [f"d{i}"])
    # When the batch is written
    acks = rec.flush()
    # Then all five outcomes are recorded and acked; four events are written, one counted lost
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert dbs.jobs.counts()["succeeded"] == 5
    assert [len(dbs.events.for_job(i)) for i in ids] == [1, 1, 0, 1, 1]
    assert rec.events_lost == 1 and rec.waiting == 0


def test_outcomes_that_took_no_effect_get_no_event_but_are_acked(dbs, monkeypatch):
    # Given a job store that reports which outcomes took effect (the others: attempts recorded
    # before, by another subscriber)
    ids = _queued_jobs(dbs, 4)
    real = dbs.jobs.record_outcomes

    def record(outcomes):
        real(outcomes)
        return [o for o in outcomes if o.job_id in ids[:2]]

    monkeypatch.setattr(dbs.jobs, "record_outcomes", record)
    rec = Recorder(dbs, batch=100, interval=0)
    for i in ids:
        _finish(rec, i, f"d{i}")
    # When the batch is written
    acks = rec.flush()
    # Then every delivery is acked, but only the two that took effect have an event
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert [len(dbs.events.for_job(i)) for i in ids] == [1, 1, 0, 0]
    assert rec.stale == 2


def test_stop_returns_within_its_timeout_while_writes_keep_failing(dbs, monkeypatch):
    import threading
    import time as _time
    # Given a running recorder holding an outcome the database keeps refusing
    (jid,) = _queued_jobs(dbs, 1)
    acked = []
    tries = threading.Event()

    def down(outcomes):
        tries.set()
        raise DatabaseError("database is down")

    monkeypatch.setattr(dbs.jobs, "record_outcomes", down)
    rec = Recorder(dbs, batch=1, interval=0, on_recorded=acked.extend)
    rec.start()
    _finish(rec, jid, "d")
    assert tries.wait(5)
    # When it is stopped with one second to spare
    t0 = _time.monotonic()
    rec.stop(timeout=1.0)
    took = _time.monotonic() - t0
    # Then it returns in time, its thread has ended, and the outcome was never acked
    assert took < 1.5 and not rec._thread.is_alive()
    assert acked == [] and rec.waiting == 1


def test_a_bug_in_the_write_path_holds_the_outcomes_instead_of_failing_them(dbs, monkeypatch):
    # Given ten finished jobs and a job store that crashes on every write (a bug, not the data)
    ids, rec, calls = _finished_but_refused(dbs, monkeypatch, 10, TypeError("unsupported operand"))
    # When the batch is written
    assert rec.flush() == []
    # Then no job is failed for it: all ten are held, and a second failure reports the reason
    assert rec.waiting == 10 and rec.refused == 0 and dbs.jobs.counts()["failed"] == 0
    rec.retry_at = 0
    rec.flush()
    assert rec.write_error == "TypeError: unsupported operand"


def _lost_at_commit() -> DatabaseError:
    """What the store raises when the connection went at the COMMIT (the server stopped then):
    the write may have committed, and nobody heard."""
    import sqlalchemy as sa
    lost = DatabaseError("could not record")
    lost.__cause__ = sa.exc.OperationalError(
        None, (), Exception(2013, "Lost connection to MySQL server during query"))
    return lost


def test_an_event_write_whose_commit_was_lost_after_it_committed_is_not_written_twice(dbs, monkeypatch):
    # Given three finished jobs, and an event write that commits and then loses its connection
    ids, rec = _finished(dbs, 3)
    real_events = dbs.events.record

    def commits_then_loses(events):
        real_events(events)
        raise _lost_at_commit()

    monkeypatch.setattr(dbs.events, "record", commits_then_loses)
    # When it is written, then written again once the database answers
    assert rec.flush() == [] and rec.waiting == 3
    monkeypatch.setattr(dbs.events, "record", real_events)
    rec.retry_at = 0
    assert sorted(rec.flush()) == sorted(f"d{i}" for i in ids)
    # Then each attempt has its one event, and each job its one outcome
    assert [len(dbs.events.for_job(i)) for i in ids] == [1, 1, 1]
    assert dbs.jobs.counts()["succeeded"] == 3


def test_an_event_write_that_failed_before_committing_is_written_on_the_retry(dbs, monkeypatch):
    # Given an event write lost before it committed (the same error, nothing written)
    ids, rec = _finished(dbs, 2)
    real_events = dbs.events.record
    monkeypatch.setattr(dbs.events, "record", lambda events: (_ for _ in ()).throw(_lost_at_commit()))
    assert rec.flush() == []
    # When the database answers again
    monkeypatch.setattr(dbs.events, "record", real_events)
    rec.retry_at = 0
    # Then the look-up finds nothing, and each event is written once
    assert sorted(rec.flush()) == sorted(f"d{i}" for i in ids)
    assert [len(dbs.events.for_job(i)) for i in ids] == [1, 1]



def test_a_flush_stalled_past_its_outcome_write_looks_its_events_up_before_writing_them(dbs, monkeypatch):
    from types import SimpleNamespace

    from enstratus_workers.daemons.subscriber import recorder as recorder_mod

    # Given two finished jobs, and a process stopped for a minute right after its outcome write,
    # during which another host found the first attempt with no event and wrote it (lost_events)
    ids, rec = _finished(dbs, 2)
    clock = [1000.0]
    monkeypatch.setattr(recorder_mod, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    real = dbs.jobs.record_outcomes_with

    def stalled(outcomes, also=None):
        out = real(outcomes, also)
        dbs.events.record([Event(ids[0], "noop", "default", 1, "succeeded", 1, "w", 2, host="other")])
        clock[0] += 60   # stopped for a minute
        return out

    monkeypatch.setattr(dbs.jobs, "record_outcomes_with", stalled)
    # When the flush goes on after the stall
    acks = rec.flush()
    # Then each attempt has one event: the first's is the other host's, the second's is written
    assert sorted(acks) == sorted(f"d{i}" for i in ids)
    assert [len(dbs.events.for_job(i)) for i in ids] == [1, 1]
    assert dbs.events.for_job(ids[0])[0].host == "other"
