"""One database for jobs and events: an outcome and its event are written in one transaction,
and an event the database refuses still costs only that event."""

from __future__ import annotations

import sqlalchemy as sa

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.daemons.subscriber import recorder as recorder_module
from enstratus_workers.daemons.subscriber.recorder import Recorder
from enstratus_workers.db import Event, NewJob, Outcome, open_databases
from enstratus_workers.layout import Layout


def _dbs(tmp_path, same: bool):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    other = url if same else f"sqlite:///{tmp_path / 'analytics.db'}"
    return open_databases(WorkerSettings(provisioning_url=Secret(url), analytics_url=Secret(other)),
                          Layout(tmp_path))


def _queued(dbs, n):
    dbs.jobs.submit_many([NewJob("noop", "{}", "default", 3)] * n)
    dbs.jobs.relay_pending(n, lambda batch: None)
    return sorted(j.job_id for j in dbs.jobs.list(limit=n))


def _finish(rec, job_id):
    rec.finished(Outcome(job_id, 1, "succeeded", "w", 1, 2, "null", None),
                 Event(job_id, "noop", "default", 1, "succeeded", 1, "w", 2), [f"d{job_id}"])


def _commits(engine) -> list[int]:
    seen = []
    sa.event.listen(engine, "commit", lambda conn: seen.append(1))
    return seen


def test_on_one_database_each_outcome_batch_and_its_events_are_one_commit(tmp_path):
    # Given a recorder whose provisioning and analytics URLs are the same database
    dbs = _dbs(tmp_path, same=True)
    try:
        ids = _queued(dbs, 30)
        rec = Recorder(dbs, batch=100, interval=0)
        commits = _commits(dbs.provisioning)
        for i in ids:
            _finish(rec, i)
        # When the batch is written
        acks = rec.flush()
        # Then all are acked, each has its one event, and outcomes and events took one commit
        assert sorted(acks) == sorted(f"d{i}" for i in ids)
        assert dbs.jobs.counts()["succeeded"] == 30
        assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
        assert rec.one_database and rec.joined == 30 and len(commits) == 1
    finally:
        dbs.close()


def test_on_two_databases_the_events_are_written_apart(tmp_path):
    dbs = _dbs(tmp_path, same=False)
    try:
        ids = _queued(dbs, 5)
        rec = Recorder(dbs, batch=100, interval=0)
        for i in ids:
            _finish(rec, i)
        assert sorted(rec.flush()) == sorted(f"d{i}" for i in ids)
        assert not rec.one_database and rec.joined == 0
        assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
    finally:
        dbs.close()


def test_an_event_the_database_refuses_fails_no_outcome_on_one_database(tmp_path, monkeypatch):
    # Given one database, and event writes inside the outcome transaction that fail
    dbs = _dbs(tmp_path, same=True)
    try:
        ids = _queued(dbs, 4)
        rec = Recorder(dbs, batch=100, interval=0)

        def refused(conn, events):
            raise sa.exc.IntegrityError("INSERT INTO enstratus_job_event", (), Exception("refused"))

        monkeypatch.setattr(recorder_module, "insert_events", refused)
        for i in ids:
            _finish(rec, i)
        # When the batch is written
        acks = rec.flush()
        # Then the outcomes are recorded as they were (written again without the events), the
        # events follow apart, and every delivery is acked
        assert sorted(acks) == sorted(f"d{i}" for i in ids)
        assert dbs.jobs.counts()["succeeded"] == 4 and rec.refused == 0 and rec.joined == 0
        assert all(len(dbs.events.for_job(i)) == 1 for i in ids)
    finally:
        dbs.close()


def test_an_outcome_batch_whose_commit_was_lost_after_it_committed_gets_no_second_event(tmp_path, monkeypatch):
    # Given one database, and an outcome write (with its events) that commits, then loses its
    # connection at the COMMIT as a stopped server does
    from enstratus_workers.errors import DatabaseError
    dbs = _dbs(tmp_path, same=True)
    try:
        ids = _queued(dbs, 6)
        rec = Recorder(dbs, batch=100, interval=0)
        real = dbs.jobs.record_outcomes_with

        def commits_then_loses(outcomes, also=None):
            if also is None:   # the two-step rewrite (record_outcomes) goes through as usual
                return real(outcomes)
            real(outcomes, also)
            lost = DatabaseError("could not record")
            lost.__cause__ = sa.exc.OperationalError(
                None, (), Exception(2013, "Lost connection to MySQL server during query"))
            raise lost

        monkeypatch.setattr(dbs.jobs, "record_outcomes_with", commits_then_loses)
        for i in ids:
            _finish(rec, i)
        # When the batch is written (the outcomes again the two-step way, as after any failure)
        acks = rec.flush()
        # Then every job is acked with its one outcome and its one event
        assert sorted(acks) == sorted(f"d{i}" for i in ids)
        assert dbs.jobs.counts()["succeeded"] == 6
        assert [len(dbs.events.for_job(i)) for i in ids] == [1] * 6
    finally:
        dbs.close()
