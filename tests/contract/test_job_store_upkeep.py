"""The job store's upkeep statements (stuck-job recovery, schedule slots, job counts), on the
embedded SQLite and a real MariaDB: the daemons and pages that need them call these only."""

from __future__ import annotations

from enstratus_workers.db import Outcome, Started
from enstratus_workers.db.schema import jobs as T
from tests.contract.test_jobs_db import dbs, job  # noqa: F401  (the fixture, on both databases)

A, B = "subscriber@a:101:aaaa", "subscriber@b:202:bbbb"


def _row(dbs, status, *, since=1000, attempts=1, max_attempts=3, owner=A, queue="default", key=None,
         action="a.b", created=None):
    j, _ = dbs.jobs.submit(job(action=action, queue=queue, key=key))
    values = dict(status=status, attempts=attempts, max_attempts=max_attempts, owner=owner,
                  worker="w@h.1", start_timestamp=since, queued_timestamp=since)
    if created is not None:
        values["created_timestamp"] = created
    with dbs.provisioning.begin() as conn:
        conn.execute(T.update().where(T.c.job_id == j.job_id).values(**values))
    return j.job_id


def test_stuck_running_and_queued_are_the_old_ones_of_their_status(dbs):
    # Given running and queued jobs, old and recent, and a pending one
    old_run = _row(dbs, "running", since=1000)
    _row(dbs, "running", since=9000)
    old_queued = _row(dbs, "queued", since=2000, attempts=0, owner=None, queue="slow")
    _row(dbs, "queued", since=9000)
    _row(dbs, "pending", since=1000)
    # When the store is asked for those since before 5000
    (run,) = dbs.jobs.stuck_running(5000)
    (queued,) = dbs.jobs.stuck_queued(5000)
    # Then each carries what recovery decides on
    assert run == (old_run, "running", 1000, 1, 3, "default", "w@h.1", A, None)   # no cancel requested
    assert queued == (old_queued, "queued", 2000, 0, 3, "slow", "w@h.1", None, None)
    assert len(dbs.jobs.stuck_running(10_000, limit=1)) == 1


def test_recover_puts_a_lost_attempt_back_or_ends_the_job(dbs):
    # Given a lost attempt 1 of 3, a lost last attempt, and a first attempt lost from the queue
    retry = _row(dbs, "running", attempts=1)
    last = _row(dbs, "running", attempts=3)
    first = _row(dbs, "queued", attempts=0, owner=None)
    by_id = {s.job_id: s for s in dbs.jobs.stuck_running(5000) + dbs.jobs.stuck_queued(5000)}
    # When each is recovered
    assert [dbs.jobs.recover(by_id[i], "stuck: test") for i in (retry, last, first)] == [
        "pending", "dead", "pending"]
    # Then the rows follow the lifecycle, without an owner, and say why
    rows = [dbs.jobs.get(i) for i in (retry, last, first)]
    assert [(r.status, r.attempts, r.owner, r.error) for r in rows] == [
        ("pending", 1, None, "stuck: test"), ("dead", 3, None, "stuck: test"),
        ("pending", 1, None, "stuck: test")]


def test_recover_leaves_a_row_that_changed_since_it_was_read(dbs):
    # Given two stuck running attempts, and one already recovered by another publisher
    taken, done = _row(dbs, "running"), _row(dbs, "running")
    twice = _row(dbs, "running")
    stuck = {s.job_id: s for s in dbs.jobs.stuck_running(5000)}
    assert dbs.jobs.recover(stuck[twice], "stuck") == "pending"
    # When one is taken over by another subscriber and one is recorded, before recovery writes
    assert dbs.jobs.take_over(taken, 1, A, Started(taken, 1, "w@h.2", 1000, B))
    with dbs.provisioning.begin() as conn:
        conn.execute(T.update().where(T.c.job_id == done).values(status="succeeded"))
    # Then recovery changes none of them
    assert [dbs.jobs.recover(stuck[i], "stuck") for i in (taken, done, twice)] == [None, None, None]
    assert dbs.jobs.get(taken).owner == B and dbs.jobs.get(done).status == "succeeded"


def test_a_row_of_an_older_release_without_an_owner_is_recovered(dbs):
    # Given a running row without an owner / When recovered / Then it is pending again
    jid = _row(dbs, "running", owner=None)
    (stuck,) = dbs.jobs.stuck_running(5000)
    assert stuck.job_id == jid and dbs.jobs.recover(stuck, "stuck") == "pending"


def test_active_keys_are_a_schedules_unfinished_slots_matched_byte_for_byte(dbs):
    # Given scheduled jobs of one action: unfinished, finished, another action's, and keys whose
    # prefix differs only in case or holds LIKE's wildcards
    _row(dbs, "pending", key="sched:a.b:acme:7")
    _row(dbs, "running", key="sched:a.b:ACME:7")
    _row(dbs, "queued", key="sched:a_b:x:7", action="a_b")
    _row(dbs, "succeeded", key="sched:a.b:done:7")
    _row(dbs, "pending", key="sched:a.b:other:7", action="other")
    _row(dbs, "pending", key="SCHED:a.b:upper:7")
    _row(dbs, "pending", key="sched:aXb:acme:7")
    # When the store is asked for the unfinished slots of action a.b
    keys = dbs.jobs.active_keys("a.b", "sched:a.b:")
    # Then only its unfinished keys with exactly that prefix come back
    assert sorted(keys) == ["sched:a.b:ACME:7", "sched:a.b:acme:7"]
    assert dbs.jobs.active_keys("a_b", "sched:a_b:") == ["sched:a_b:x:7"]
    assert dbs.jobs.active_keys("a.b", "sched:a%") == []


def test_counts_since_a_time_count_only_the_jobs_created_from_then_on(dbs):
    # Given jobs created at 1000, 2000 and 3000 ms, the finished ones recorded by their owner
    # (the job store's own write: it keeps the totals the counts of finished jobs come from)
    for created, status in ((1000, "succeeded"), (2000, "failed"), (3000, "pending")):
        job_id = _row(dbs, "running" if status != "pending" else status, created=created)
        if status != "pending":
            assert dbs.jobs.record_outcomes([Outcome(job_id, 1, status, "w@h.1", 1000, 1500, None, None, A)])
    # When counted from 2000 on / Then the first is left out, and every status is present
    since = dbs.jobs.counts(created_since_ms=2000)
    assert since == {**{s: 0 for s in since}, "failed": 1, "pending": 1}
    assert set(since) == {"pending", "queued", "running", "succeeded", "failed", "dead", "cancelled"}
    assert dbs.jobs.counts()["succeeded"] == 1 == dbs.jobs.counts(created_since_ms=0)["succeeded"]
