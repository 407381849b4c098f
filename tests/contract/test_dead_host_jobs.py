"""A dead host's running jobs: another host's publisher puts them back as soon as their owner's
heartbeat expired (not after the action's time limit), the lost attempt counted; when the host
comes back (it was only cut off) its late writes are refused and nothing is recorded twice.
On the embedded SQLite and a real MariaDB."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest

from enstratus_workers.config.settings import Settings, WorkerSettings
from enstratus_workers.daemons.publisher.recovery import StuckJobs
from enstratus_workers.db import Event, Outcome, Started
from enstratus_workers.db.heartbeats import HeartbeatStore
from tests.contract.test_jobs_db import dbs, job  # noqa: F401  (the fixture, on both databases)

HOST1, HOST2, HOST3 = "subscriber@host1:101:aaaa", "subscriber@host2:202:bbbb", "subscriber@host3:303:cccc"


def _settings():
    # a long time limit: the dead host's jobs must come back long before it is over
    return Settings(home=None, mq=None, worker=WorkerSettings(time_limit=3600, grace_period=30),
                    persistence=None, km_client=None, provisioning=None)


def _running(dbs, owner, worker, n=1, attempt=1):
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(n)]
    dbs.jobs.relay_pending(100, lambda batch: None)
    dbs.jobs.mark_started([Started(i, attempt, worker, int(time.time() * 1000), owner) for i in ids])
    return ids


def _beat(dbs, host, owner, ttl_s):
    HeartbeatStore(dbs.provisioning, host).beat("subscriber", host, ttl_s=ttl_s, details={"owner": owner})


def _outcome(job_id, owner, attempt, end_ms):
    return Outcome(job_id, attempt, "succeeded", f"default@{owner.split('@')[1].split(':')[0]}.1",
                   end_ms - 100, end_ms, '{"by": "%s"}' % owner, None, owner)


def test_a_dead_hosts_running_jobs_go_back_at_once_and_its_late_writes_are_refused(dbs):
    # Given host2's subscriber running two jobs it started a moment ago, host1's running one
    lost = _running(dbs, HOST2, "default@host2", n=2)
    kept = _running(dbs, HOST1, "default@host1")
    _beat(dbs, "host1", HOST1, ttl_s=60)
    # and host2's heartbeat just expired (killed, or cut off)
    _beat(dbs, "host2", HOST2, ttl_s=-1)
    # When host1's publisher looks for dead owners' jobs (seconds after they started, long
    # before their hour of time limit)
    recovery = StuckJobs(_settings(), dbs)
    assert recovery.orphans() == 2
    # Then host2's jobs are pending again, their lost attempt counted, with the reason; host1's runs on
    for jid in lost:
        row = dbs.jobs.get(jid)
        assert (row.status, row.attempts, row.owner) == ("pending", 1, None)
        assert "heartbeat expired" in row.error and "default@host2" in row.error
    assert dbs.jobs.get(kept[0]).status == "running"
    # And a second publisher (host3's) finds nothing left to do
    assert StuckJobs(_settings(), dbs).orphans() == 0

    # When they are relayed as attempt 2 and host1 runs and records one of them
    dbs.jobs.relay_pending(100, lambda batch: None)
    dbs.jobs.mark_started([Started(lost[0], 2, "default@host1", 3000, HOST1)])
    newer = _outcome(lost[0], HOST1, 2, end_ms=4000)
    assert dbs.jobs.record_outcomes([newer]) == [newer]
    # and host2 comes back and tries to record its attempt 1 of both, and mark one again
    late = [_outcome(jid, HOST2, 1, end_ms=5000) for jid in lost]
    dbs.jobs.mark_started([Started(lost[1], 1, "default@host2", 5000, HOST2)])
    applied = dbs.jobs.record_outcomes(late)
    # Then none of host2's writes took effect: the newer attempt stands, the other waits for its turn
    assert applied == []
    first, second = dbs.jobs.get(lost[0]), dbs.jobs.get(lost[1])
    assert (first.status, first.attempts, first.owner, first.end_timestamp) == ("succeeded", 2, HOST1, 4000)
    assert (second.status, second.attempts, second.owner) == ("queued", 1, None)
    # and only outcomes that took effect become events: one per attempt, recorded once
    dbs.events.record([Event(o.job_id, "noop", "default", o.attempt, o.status, 100, o.worker, o.end_ms)
                       for o in [newer, *applied]])
    assert [(e.attempt, e.worker) for e in dbs.events.for_job(lost[0])] == [(2, "default@host1.1")]


def test_an_owner_that_starts_beating_while_its_jobs_are_read_is_not_taken_for_dead(dbs, monkeypatch):
    # Given a subscriber that beat, then marked a job, just after recovery read the heartbeats
    (jid,) = _running(dbs, HOST2, "default@host2")
    reads = []
    real = dbs.heartbeats.all

    def heartbeats():
        reads.append(1)
        if len(reads) == 1:
            return []            # the first read came before the new subscriber's first beat
        _beat(dbs, "host2", HOST2, ttl_s=60)
        return real()

    monkeypatch.setattr(dbs.heartbeats, "all", heartbeats)
    # When recovery runs / Then the heartbeats read after the jobs save it
    assert StuckJobs(_settings(), dbs).orphans() == 0 and dbs.jobs.get(jid).status == "running"


def test_dead_owners_are_looked_for_every_few_seconds_not_every_sweep(dbs):
    # Given a publisher's recovery whose full sweep is an hour away and whose orphan look is due
    recovery = StuckJobs(_settings(), dbs, every_s=3600, orphans_every_s=0)
    (jid,) = _running(dbs, HOST2, "default@host2")
    _beat(dbs, "host2", HOST2, ttl_s=-1)
    # When the publisher's loop ticks / Then the dead owner's job is back
    assert recovery.tick() == 1 and dbs.jobs.get(jid).status == "pending"


@contextmanager
def _clock_off_by(seconds: float):
    """This process's wall clock ``seconds`` off, as a host whose clock is off sees it."""
    real, real_ns = time.time, time.time_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: real() + seconds)
        mp.setattr(time, "time_ns", lambda: real_ns() + int(seconds * 1e9))
        yield


@pytest.mark.parametrize("publisher_off, subscriber_off", [(3600, 0), (0, -3600), (-3600, 0), (0, 3600)],
                         ids=["publisher an hour ahead", "subscriber an hour behind",
                              "publisher an hour behind", "subscriber an hour ahead"])
def test_hosts_whose_clocks_disagree_judge_heartbeats_alike_on_the_database_clock(
        mariadb_dbs, publisher_off, subscriber_off):
    dbs = mariadb_dbs
    # Given host2's subscriber running a job and beating, and host3's subscriber, which died,
    # its last beat expired; each written on its host's own clock
    (alive,) = _running(dbs, HOST2, "default@host2")
    (orphan,) = _running(dbs, HOST3, "default@host3")
    with _clock_off_by(subscriber_off):
        _beat(dbs, "host2", HOST2, ttl_s=10)
        _beat(dbs, "host3", HOST3, ttl_s=-1)
    # When host1's publisher, its own clock off or not, looks for dead owners' jobs
    with _clock_off_by(publisher_off):
        recovered = StuckJobs(_settings(), dbs).orphans()
        beats = {hb.host: hb.expired for hb in dbs.heartbeats.all()}
    # Then the live subscriber's job runs on, and only the dead one's is put back
    assert beats == {"host2": False, "host3": True}
    assert recovered == 1
    assert dbs.jobs.get(alive).status == "running" and dbs.jobs.get(orphan).status == "pending"
