"""The job store's contract, run against the embedded SQLite and a real MariaDB."""

from __future__ import annotations

import json
import threading

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import Event, NewJob, Outcome, Started, open_databases
from enstratus_workers.errors import PublishError
from enstratus_workers.layout import Layout


@pytest.fixture(params=["sqlite", "mysql"])
def dbs(request, tmp_path):
    if request.param == "sqlite":
        url_p, url_a = "sqlite:///data/prov.db", "sqlite:///data/anal.db"
    else:
        base = request.getfixturevalue("mysql_url")
        url_p = url_a = base
    dbs = open_databases(WorkerSettings(provisioning_url=Secret(url_p), analytics_url=Secret(url_a)),
                         Layout(tmp_path))
    yield dbs
    dbs.close()


def job(action="noop", args="{}", queue="default", key=None):
    return NewJob(action=action, arguments=args, queue=queue, max_attempts=3, idempotency_key=key)


def test_submit_creates_a_pending_job(dbs):
    # Given an empty database / When a job is submitted
    created, is_new = dbs.jobs.submit(job("echo", '{"a": 1}'))
    # Then it is pending with its arguments kept verbatim and a creation time in ms
    assert is_new and created.status == "pending" and created.attempts == 0
    assert json.loads(created.arguments) == {"a": 1}
    assert created.created_timestamp > 1_600_000_000_000
    assert dbs.jobs.get(created.job_id) == created


def test_idempotency_key_returns_the_first_job(dbs):
    first, new1 = dbs.jobs.submit(job(key="k-1"))
    second, new2 = dbs.jobs.submit(job(action="echo", key="k-1"))
    assert new1 and not new2 and second.job_id == first.job_id and second.action == "noop"


def test_jobs_stored_together_each_get_their_own_row_in_order(dbs):
    # Given more distinct jobs than one multi-row INSERT holds (db/jobs.py: RETURNING_ROWS)
    from enstratus_workers.db.jobs import RETURNING_ROWS
    n = RETURNING_ROWS + 7
    new = [job("echo", json.dumps({"i": i}), queue=f"q{i % 3}") for i in range(n)]
    # When they are stored in one call
    stored = dbs.jobs.submit_jobs(new)
    # Then each job's id names the row holding its own arguments, and the ids rise in order
    assert [j.job_id for j in stored] == sorted({j.job_id for j in stored})
    for i, j in enumerate(stored):
        row = dbs.jobs.get(j.job_id)
        assert (json.loads(row.arguments), row.queue, row.status) == ({"i": i}, f"q{i % 3}", "pending")
    assert dbs.jobs.counts()["pending"] == n


def test_relay_marks_confirmed_jobs_queued(dbs):
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(5)]
    seen = []
    assert dbs.jobs.relay_pending(3, lambda batch: seen.extend(j.job_id for j in batch)) == 3
    assert seen == ids[:3]
    assert dbs.jobs.counts()["queued"] == 3 and dbs.jobs.counts()["pending"] == 2
    assert dbs.jobs.get(ids[0]).queued_timestamp is not None


def test_relay_keeps_unconfirmed_jobs_pending(dbs):
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(4)]

    def publish(batch):
        raise PublishError("nacked", unconfirmed=[str(ids[1]), str(ids[3])])

    with pytest.raises(PublishError):
        dbs.jobs.relay_pending(10, publish)
    assert dbs.jobs.get(ids[0]).status == "queued" and dbs.jobs.get(ids[2]).status == "queued"
    assert dbs.jobs.get(ids[1]).status == "pending" and dbs.jobs.get(ids[3]).status == "pending"


def test_crash_during_publish_leaves_jobs_pending(dbs):
    jid = dbs.jobs.submit(job())[0].job_id

    def publish(batch):
        raise RuntimeError("publisher died mid-batch")

    with pytest.raises(RuntimeError):
        dbs.jobs.relay_pending(10, publish)
    assert dbs.jobs.get(jid).status == "pending"


def test_two_publishers_never_relay_one_job_twice(dbs):
    # Given 200 pending jobs and two publishers relaying concurrently
    dbs.jobs.submit_many([job() for _ in range(200)])
    relayed: list[int] = []
    lock = threading.Lock()

    def publish(batch):
        with lock:
            relayed.extend(j.job_id for j in batch)

    def publisher():
        while dbs.jobs.relay_pending(7, publish):
            pass

    threads = [threading.Thread(target=publisher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then every job was relayed exactly once
    assert len(relayed) == 200 and len(set(relayed)) == 200
    assert dbs.jobs.counts()["queued"] == 200


def test_outcomes_are_recorded_in_one_batch_and_only_once(dbs):
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(3)]
    dbs.jobs.relay_pending(10, lambda b: None)
    dbs.jobs.mark_started([Started(i, 1, "w@h.1", 1000 + i) for i in ids])
    assert dbs.jobs.get(ids[0]).status == "running" and dbs.jobs.get(ids[0]).worker == "w@h.1"
    dbs.jobs.record_outcomes([
        Outcome(ids[0], 1, "succeeded", "w@h.1", 1000, 1010, '{"x": 1}', None),
        Outcome(ids[1], 1, "failed", "w@h.2", 1000, 1020, None, "ActionError: boom"),
    ])
    a, b, c = (dbs.jobs.get(i) for i in ids)
    assert (a.status, a.result, a.end_timestamp, a.error) == ("succeeded", '{"x": 1}', 1010, None)
    assert (b.status, b.error, b.worker, b.attempts) == ("failed", "ActionError: boom", "w@h.2", 1)
    assert c.status == "running"
    # A redelivered duplicate's outcome does not overwrite the recorded one
    dbs.jobs.record_outcomes([Outcome(ids[0], 2, "failed", "w@h.9", 2000, 2001, None, "late")])
    assert dbs.jobs.get(ids[0]).status == "succeeded" and dbs.jobs.get(ids[0]).attempts == 1


def test_many_outcomes_span_several_chunks(dbs):
    dbs.jobs.submit_many([job() for _ in range(450)])
    dbs.jobs.relay_pending(1000, lambda b: None)
    ids = [j.job_id for j in dbs.jobs.list(limit=1000)]
    dbs.jobs.record_outcomes([Outcome(i, 1, "succeeded", "w", 1, 2, "null", None) for i in ids])
    assert dbs.jobs.counts()["succeeded"] == 450


def test_one_chunk_gives_each_row_its_own_values_shared_or_not(dbs):
    # Given 12 jobs: 8 on their first attempt, 4 running as attempt 2 of two owners
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(12)]
    dbs.jobs.relay_pending(100, lambda b: None)
    first, second = ids[:8], ids[8:]
    dbs.jobs.record_outcomes([Outcome(i, 1, "pending", "w", 1, 2, None, "retry", owner="s@a")
                              for i in second])
    dbs.jobs.mark_started([Started(i, 2, f"w{k % 2}", 50 + k, owner=f"s@{'ab'[k % 2]}")
                           for k, i in enumerate(second)])
    # When one write holds outcomes whose columns repeat a value (status, result) on most rows,
    # differ on every row (end time) or come in a few groups (worker, owner, attempt)
    outcomes = [Outcome(i, 1, "succeeded" if k % 3 else "failed", f"w{k % 3}", 100, 200 + k,
                        None if k % 3 == 0 else '{"k": %d}' % k, "boom" if k % 3 == 0 else None,
                        owner="s@c") for k, i in enumerate(first)]
    outcomes += [Outcome(i, 2, "succeeded", f"w{k % 2}", 50 + k, 300 + k, "null", None,
                         owner=f"s@{'ab'[k % 2]}") for k, i in enumerate(second)]
    outcomes.append(Outcome(second[0], 2, "failed", "w9", 1, 1, None, "not its owner", owner="s@z"))
    took = dbs.jobs.record_outcomes(outcomes)
    # Then every row reads its own outcome, and the stranger's outcome took no row
    assert sorted(o.job_id for o in took) == sorted(ids)
    for o in outcomes[:-1]:
        row = dbs.jobs.get(o.job_id)
        assert (row.status, row.attempts, row.worker, row.owner, row.start_timestamp, row.end_timestamp,
                row.result, row.error) == (o.status, o.attempt, o.worker, o.owner, o.start_ms, o.end_ms,
                                           o.result, o.error)


def test_events_and_heartbeats(dbs):
    dbs.events.record([Event(7, "noop", "default", 1, "succeeded", 3, "w", 1000),
                       Event(7, "noop", "default", 2, "failed", 5, "w", 1001)])
    assert [e.attempt for e in dbs.events.for_job(7)] == [1, 2]
    assert dbs.events.summary()["noop"]["outcomes"] == {"succeeded": 1, "failed": 1}
    dbs.heartbeats.beat("publisher", "h", ttl_s=30, details={"published": 3})
    dbs.heartbeats.beat("publisher", "h", ttl_s=-1)
    (hb,) = dbs.heartbeats.all()
    assert hb.daemon == "publisher" and hb.expired
    dbs.heartbeats.remove("publisher", "h")
    assert dbs.heartbeats.all() == []


def test_schema_version_newer_than_code_is_refused(dbs, tmp_path):
    from enstratus_workers.db.migrate import upgrade
    from enstratus_workers.errors import DatabaseError

    with dbs.provisioning.begin() as conn:
        conn.exec_driver_sql("UPDATE enstratus_migration_provisioning SET version_num = 'provisioning_0099'")
    with pytest.raises(DatabaseError, match="newer"):
        upgrade(dbs.provisioning, "provisioning")
