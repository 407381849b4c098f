"""Stuck-job recovery puts lost jobs back in the outbox, and leaves live ones alone."""

from __future__ import annotations

import pytest

from enstratus_workers.config.settings import Settings, WorkerSettings
from enstratus_workers.daemons.publisher.recovery import StuckJobs, _host_of
from enstratus_workers.db import NewJob, Outcome, now_ms, open_databases
from enstratus_workers.db.schema import jobs as T
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.mq.base import QueueDepth


@pytest.fixture
def dbs(tmp_path):
    d = open_databases(WorkerSettings(), Layout(tmp_path))
    yield d
    d.close()


def _job(dbs, status, *, worker=None, age_s=0, attempts=1, max_attempts=3, queue="default", owner=None):
    job, _ = dbs.jobs.submit(NewJob("noop", "{}", queue, max_attempts))
    stamp = now_ms() - int(age_s * 1000)
    with dbs.provisioning.begin() as conn:
        conn.execute(T.update().where(T.c.job_id == job.job_id).values(
            status=status, worker=worker, attempts=attempts, start_timestamp=stamp, queued_timestamp=stamp,
            owner=owner))
    return job.job_id


def _settings():
    return Settings(home=None, mq=None, worker=WorkerSettings(time_limit=10, grace_period=5),
                    persistence=None, km_client=None, provisioning=None)


def test_running_jobs_of_a_dead_subscriber_go_back_to_the_outbox(dbs):
    # Given a job running for far too long on a host whose subscriber no longer beats,
    lost = _job(dbs, "running", worker="default@ghost.1", age_s=3600)
    # one on this host, whose subscriber beats,
    live = _job(dbs, "running", worker=f"default@{short_hostname()}.2", age_s=3600)
    dbs.heartbeats.beat("subscriber", "me", ttl_s=30)
    # one recent, and one lost on its last attempt
    recent = _job(dbs, "running", worker="default@ghost.1", age_s=1)
    last = _job(dbs, "running", worker="default@ghost.1", age_s=3600, attempts=3, max_attempts=3)
    # When the publisher sweeps
    assert StuckJobs(_settings(), dbs).sweep() == 2
    # Then the lost one is pending again (its attempt counted), the last one dead, the rest alone
    assert dbs.jobs.get(lost).status == "pending" and "stuck" in dbs.jobs.get(lost).error
    assert dbs.jobs.get(last).status == "dead"
    assert dbs.jobs.get(live).status == "running" and dbs.jobs.get(recent).status == "running"


def test_running_attempts_are_recovered_by_their_owners_heartbeat_not_their_host(dbs):
    # Given two long-running jobs taken on this host: one by the subscriber process beating now,
    dbs.heartbeats.beat("subscriber", "me", ttl_s=30, details={"owner": "me@here:1:aa"})
    live = _job(dbs, "running", worker=f"default@{short_hostname()}.1", age_s=3600, owner="me@here:1:aa")
    # one by an earlier process on the same host (restarted since: its token beats no more)
    gone = _job(dbs, "running", worker=f"default@{short_hostname()}.1", age_s=3600, owner="me@here:0:zz")
    # When the publisher sweeps
    assert StuckJobs(_settings(), dbs).sweep() == 1
    # Then only the gone owner's attempt is back in the outbox, without an owner
    assert dbs.jobs.get(live).status == "running"
    assert (dbs.jobs.get(gone).status, dbs.jobs.get(gone).owner) == ("pending", None)
    # and its old owner, waking up, can record nothing for that attempt
    late = Outcome(gone, 1, "succeeded", "w", 1, 2, "null", None, "me@here:0:zz")
    assert dbs.jobs.record_outcomes([late]) == [] and dbs.jobs.get(gone).status == "pending"


def test_a_queued_job_left_with_a_retried_attempts_owner_is_still_recovered(dbs):
    # Given a retry relayed (queued, still naming the owner of the attempt before) whose message was lost
    lost = _job(dbs, "queued", age_s=7200, owner="old@host:1:aa")

    def depths(queues):
        return [QueueDepth(q, 0, None, 1, 0) for q in queues]

    # When the publisher sweeps / Then it goes back to the outbox
    assert StuckJobs(_settings(), dbs, depths=depths).sweep() == 1
    assert dbs.jobs.get(lost).status == "pending"


def test_queued_jobs_are_recovered_only_when_their_queue_has_nothing_waiting(dbs):
    lost = _job(dbs, "queued", age_s=7200, queue="default")
    waiting = _job(dbs, "queued", age_s=7200, queue="slow")

    def depths(queues):
        return [QueueDepth(q, 0 if q == "default" else 5000, None, 1, 0) for q in queues]

    assert StuckJobs(_settings(), dbs, depths=depths).sweep() == 1
    assert dbs.jobs.get(lost).status == "pending" and dbs.jobs.get(waiting).status == "queued"


def test_two_publishers_recover_a_job_once(dbs):
    _job(dbs, "running", worker="default@ghost.1", age_s=3600)
    a, b = StuckJobs(_settings(), dbs), StuckJobs(_settings(), dbs)
    assert a.sweep() + b.sweep() == 1


def test_tick_is_cheap_until_a_sweep_is_due(dbs):
    stuck = StuckJobs(_settings(), dbs, every_s=3600)
    _job(dbs, "running", worker="default@ghost.1", age_s=3600)
    assert stuck.tick() == 0       # not due yet
    stuck._next = 0
    assert stuck.tick() == 1


def test_host_of_a_worker_name():
    assert _host_of("default@web-3.2") == "web-3"
    assert _host_of("default@web.example.com") == "web.example.com"
    assert _host_of("") is None and _host_of(None) is None


def test_a_cancelled_job_whose_owner_died_goes_back_only_for_its_compensation(dbs):
    # Given two jobs running for a minute, on their last attempt, each cancelled 100 s ago (the
    # cancel grace and the slack are over): one whose owner is gone, one whose owner beats
    dbs.heartbeats.beat("subscriber", "me", ttl_s=30, details={"owner": "me@here:1:aa"})
    gone = _job(dbs, "running", worker="default@ghost.1", age_s=60, attempts=3, max_attempts=3,
                owner="ghost@there:9:zz")
    live = _job(dbs, "running", worker="default@me.1", age_s=60, attempts=3, max_attempts=3, owner="me@here:1:aa")
    for job_id in (gone, live):
        dbs.jobs.cancel(job_id)
    with dbs.provisioning.begin() as conn:
        conn.execute(T.update().values(cancel_requested_ms=now_ms() - 100_000))
    # When the publisher sweeps (long before the jobs' time limit)
    assert StuckJobs(_settings(), dbs).sweep() == 1
    # Then the lost one is neither dead nor retried: pending only for its compensation, relayed at once
    row = dbs.jobs.get(gone)
    assert (row.status, row.attempts) == ("pending", 3) and "cancel requested: compensating" in row.error
    relayed = []
    dbs.jobs.relay_pending(10, relayed.extend)
    assert [(j.job_id, j.next_attempt(now_ms())) for j in relayed] == [(gone, (4, 0))]
    # and the one whose owner beats is left to it
    assert dbs.jobs.get(live).status == "running"
