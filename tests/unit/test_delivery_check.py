"""The subscriber runs a delivery only if its job row says so (DESIGN.md: the row is the truth).

Each test hands the subscriber's main loop deliveries as its intake thread would, against a
real SQLite provisioning database, and looks at what it queued for its workers and what it
acked, dead-lettered or kept.
"""

from __future__ import annotations

import itertools
import logging
import queue
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from enstratus_workers.config.settings import Settings, WorkerSettings
from enstratus_workers.daemons.subscriber import lost_events
from enstratus_workers.daemons.subscriber.daemon import Subscriber
from enstratus_workers.daemons.subscriber.lost_events import LostEvents
from enstratus_workers.db import Event, JobStore, NewJob, Outcome, Started, open_databases
from enstratus_workers.jobs.messages import encode_job
from enstratus_workers.layout import Layout
from enstratus_workers.mq.base import Delivery

_tags = itertools.count(1)


class RecordingIntake:
    """The intake's settling calls, written down (the main loop's only contact with the queue)."""

    def __init__(self):
        self.deliveries = queue.SimpleQueue()
        self.acked, self.nacked, self.dead = [], [], []

    def ack(self, deliveries):
        self.acked.extend(deliveries)

    def nack(self, deliveries):
        self.nacked.extend(deliveries)

    def dead_letter(self, delivery, reason):
        self.dead.append((delivery, reason))


@pytest.fixture
def sub(tmp_path):
    settings = Settings(home=None, mq=None, worker=WorkerSettings(), persistence=None, km_client=None,
                        provisioning=None)
    s = Subscriber(settings, Layout(tmp_path), "test")
    s.dbs = open_databases(settings.worker, Layout(tmp_path))
    s.intake = RecordingIntake()
    s.pool = SimpleNamespace(types={}, handles=[])
    s.pauses = s.pause_gate()
    s.lost_events = LostEvents(s.dbs)
    yield s
    s.dbs.close()


def deliver(sub, *messages):
    """Messages as (job_id, attempt[, action, arguments, max_attempts]) arrive in one batch."""
    batch = []
    for m in messages:
        job_id, attempt, action, arguments, max_attempts = m if len(m) == 5 else (*m, "noop", "{}", 3)
        batch.append(Delivery("default", encode_job(job_id, action, arguments, attempt, max_attempts),
                              str(job_id), False, next(_tags)))
    sub.intake.deliveries.put(batch)
    sub._take_deliveries()
    return batch


def queued_for_workers(sub):
    return [a.task for q in sub.pending.values() for a in q]


def new_job(sub, action="echo", arguments='{"from": "row"}', max_attempts=5, relay=True):
    job, _ = sub.dbs.jobs.submit(NewJob(action, arguments, "default", max_attempts))
    if relay:
        sub.dbs.jobs.relay_pending(100, lambda batch: None)
    return job.job_id


def test_a_stranger_is_dead_lettered_with_the_reason(sub):
    # Given no job 4242 in the database / When a message for it arrives
    (d,) = deliver(sub, (4242, 1))
    # Then it is dead-lettered, saying why, counted, and nothing runs
    assert sub.intake.dead == [(d, "stranger: no job 4242 in the provisioning database")]
    assert sub.stats["strangers"] == 1 and queued_for_workers(sub) == []


def test_a_duplicate_of_a_finished_job_is_acked_away_unrun(sub):
    # Given a job whose attempt 1 already succeeded
    jid = new_job(sub)
    sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "w", 1, 2, "null", None, "other")])
    # When a second copy of its message arrives (not flagged redelivered)
    (d,) = deliver(sub, (jid, 1))
    # Then it is acked as stale and not run
    assert sub.intake.acked == [d] and sub.stats["stale"] == 1 and queued_for_workers(sub) == []


def test_a_delivery_of_an_attempt_the_row_is_not_at_is_stale(sub):
    # Given a queued job (at attempt 1) and one whose attempt 1 was recorded as a retry
    fresh = new_job(sub)
    retried = new_job(sub)
    sub.dbs.jobs.record_outcomes([Outcome(retried, 1, "pending", "w", 1, 2, None, "boom", "other")])
    # When attempt 2 of the first and attempt 1 of the second arrive
    stale = deliver(sub, (fresh, 2), (retried, 1))
    # Then both are acked away unrun
    assert sub.intake.acked == stale and sub.stats["stale"] == 2 and queued_for_workers(sub) == []


def test_a_delivery_racing_the_outbox_runs_with_the_rows_action_and_arguments(sub):
    # Given a job still pending at attempts 0: the publisher has not yet marked it queued
    jid = new_job(sub, relay=False)
    # When its attempt 1 arrives carrying other action, arguments and max_attempts than the row
    deliver(sub, (jid, 1, "fail", '{"from": "message"}', 99))
    # Then it runs, as the row says, held by this process
    (task,) = queued_for_workers(sub)
    assert (task.job_id, task.action, task.arguments, task.attempt, task.max_attempts, task.owner) == (
        jid, "echo", {"from": "row"}, 1, 5, sub.owner)
    assert sub.intake.acked == [] and sub.intake.dead == []


def test_a_second_copy_of_an_attempt_running_here_settles_with_it(sub):
    # Given attempt 1 of a job queued here for a worker
    jid = new_job(sub)
    deliver(sub, (jid, 1))
    # When a second copy arrives / Then it waits with the first, which alone runs
    (dup,) = deliver(sub, (jid, 1))
    assert len(queued_for_workers(sub)) == 1 and sub.active[(jid, 1)][1] is dup
    assert sub.stats["duplicates"] == 1


def test_a_batch_is_checked_with_one_query(sub):
    # Given 50 queued jobs
    ids = [new_job(sub) for _ in range(50)]
    statements = []
    sa.event.listen(sub.dbs.provisioning, "before_cursor_execute",
                    lambda conn, cursor, sql, *a: statements.append(sql))
    # When their messages arrive in one batch
    deliver(sub, *((i, 1) for i in ids))
    # Then one SELECT read all their rows, and all 50 wait for workers
    assert len([s for s in statements if "enstratus_job" in s]) == 1
    assert len(queued_for_workers(sub)) == 50


def test_with_the_database_down_nothing_runs_blind_and_the_check_is_retried(sub, caplog):
    # Given a job, and a database that does not answer
    jid = new_job(sub)
    real = sub.dbs.jobs
    sub.dbs.jobs = JobStore(sa.create_engine("mysql+pymysql://root@127.0.0.1:9/none",
                                             connect_args={"connect_timeout": 1}))
    # When its message arrives, and the check is tried again
    with caplog.at_level(logging.WARNING, logger="enstratus_workers.daemons.subscriber"):
        (d,) = deliver(sub, (jid, 1))
        sub._check_at = 0.0
        sub._check_deliveries()
    # Then it is neither run nor settled, and the outage was logged once
    assert queued_for_workers(sub) == [] and not (sub.intake.acked or sub.intake.nacked or sub.intake.dead)
    assert len([r for r in caplog.records if "cannot read the job rows" in r.message]) == 1
    assert [d2 for d2, _ in sub._unchecked] == [d]
    # And once the database answers again, it runs
    sub.dbs.jobs.engine.dispose()
    sub.dbs.jobs = real
    sub._check_at = 0.0
    sub._check_deliveries()
    assert [m.job_id for m in queued_for_workers(sub)] == [jid]


def test_an_attempt_another_live_subscriber_holds_waits_until_it_is_recorded(sub):
    # Given attempt 1 running under another subscriber whose heartbeat is live
    jid = new_job(sub)
    sub.dbs.heartbeats.beat("subscriber", "other", ttl_s=30, details={"owner": "other@h:1:aa"})
    sub.dbs.jobs.mark_started([Started(jid, 1, "w", 1, "other@h:1:aa")])
    # When a copy of it arrives here (the broker redelivered it)
    (d,) = deliver(sub, (jid, 1))
    # Then it waits, unsettled and unrun
    assert queued_for_workers(sub) == [] and sub.intake.acked == [] and len(sub._held) == 1
    # And once the owner has recorded it (its outcome, then its event), the copy is acked away as stale
    sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "w", 1, 2, "null", None, "other@h:1:aa")])
    sub.dbs.events.record([Event(jid, "echo", "default", 1, "succeeded", 1, "w", 2, host="h")])
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [d] and queued_for_workers(sub) == [] and sub._held == []


def test_an_attempt_whose_owner_stopped_beating_is_taken_over(sub):
    # Given attempt 1 running under a subscriber whose heartbeat expired
    jid = new_job(sub)
    sub.dbs.heartbeats.beat("subscriber", "other", ttl_s=-1, details={"owner": "other@h:1:aa"})
    sub.dbs.jobs.mark_started([Started(jid, 1, "w", 1, "other@h:1:aa")])
    # When a copy of it arrives here
    deliver(sub, (jid, 1))
    # Then this subscriber owns the attempt and runs it; the old owner can record nothing
    assert dbs_owner(sub, jid) == sub.owner and [m.job_id for m in queued_for_workers(sub)] == [jid]
    assert sub.stats["taken_over"] == 1
    late = Outcome(jid, 1, "succeeded", "w", 1, 2, "null", None, "other@h:1:aa")
    assert sub.dbs.jobs.record_outcomes([late]) == []


def test_only_work_handed_to_a_worker_is_marked_running_and_as_this_process(sub):
    # Given two jobs accepted here, of which a worker has been handed the first
    first, second = new_job(sub), new_job(sub)
    deliver(sub, (first, 1), (second, 1))
    marks = []
    sub.recorder = SimpleNamespace(started=marks.append)
    sub.pool.handles = [SimpleNamespace(inflight=[sub.pending["default"].popleft()])]
    # When the loop marks what was dispatched (twice: once per attempt, whatever the rounds)
    sub._mark_dispatched()
    sub._mark_dispatched()
    # Then only the first is marked, owned by this subscriber process
    assert [(m.job_id, m.attempt, m.owner) for m in marks] == [(first, 1, sub.owner)]


def dbs_owner(sub, job_id):
    return sub.dbs.jobs.get(job_id).owner


class RecordingRecorder:
    def __init__(self):
        self.finished_calls = []

    def finished(self, outcome, event, deliveries, dead_reason=None):
        self.finished_calls.append((outcome, event, deliveries, dead_reason))


def test_the_workers_outcome_reaches_the_recorder_unchanged_and_a_crash_is_charged_from_the_task(sub):
    # Given two jobs accepted here, the second on its last attempt
    first, last = new_job(sub), new_job(sub, max_attempts=1)
    deliver(sub, (first, 1), (last, 1, "echo", '{"from": "row"}', 1))
    a, b = sub.pending["default"]
    sub.recorder = RecordingRecorder()
    # When the first's worker answers, and the second's worker dies under it
    answered = a.task.outcome("succeeded", retryable=False, worker="default@h.1", start_ms=10, end_ms=25,
                              result="null")
    sub._settle(SimpleNamespace(finished=[(a, answered)], crashed=[(b, ("worker process died", 30))],
                                returned=[]))
    # Then the first's outcome is what the recorder got, with its event
    (o1, e1, d1, dead1), (o2, e2, _, dead2) = sub.recorder.finished_calls
    assert o1 is answered and (e1.outcome, e1.duration_ms, d1, dead1) == ("succeeded", 15, [a.delivery], None)
    # and the second is a retryable failure of its last attempt: dead, saying why, owned here
    assert (o2.job_id, o2.status, o2.owner, o2.start_ms) == (last, "dead", sub.owner, 30)
    assert o2.error == dead2 == "worker process died (attempt 1 of 1; dead)" and e2.outcome == "dead"
    assert sub.stats["succeeded"] == 1 and sub.stats["dead"] == 1


def pause(sub, kind, name):
    from enstratus_workers.db.pauses import PauseStore

    PauseStore(sub.dbs.provisioning, known_queue=lambda _q: True).pause(kind, name)
    sub.pauses.ttl = 0   # read the pauses again at the next look


def test_a_delivery_of_a_paused_account_goes_back_to_the_outbox_unrun_and_uncounted(sub):
    # Given a queued job of account acme, a queued one of account other, and acme paused
    paused = sub.dbs.jobs.submit(NewJob("echo", "{}", "default", 5, account="acme"))[0].job_id
    running = sub.dbs.jobs.submit(NewJob("echo", "{}", "default", 5, account="other"))[0].job_id
    sub.dbs.jobs.relay_pending(100, lambda batch: None)
    pause(sub, "account", "acme")
    # When both are delivered
    back, _ = deliver(sub, (paused, 1), (running, 1))
    # Then the paused one is pending again at attempt count 0, and its message acked
    assert (sub.dbs.jobs.get(paused).status, sub.dbs.jobs.get(paused).attempts) == ("pending", 0)
    assert sub.intake.acked == [back] and sub.pauses.given_back == 1
    # And only the other one waits for a worker, with its account
    assert [(t.job_id, t.account) for t in queued_for_workers(sub)] == [(running, "other")]


def test_work_waiting_for_a_worker_when_its_queue_is_paused_goes_back_too(sub):
    # Given two jobs checked and waiting here for a worker
    first, second = new_job(sub), new_job(sub)
    deliveries = deliver(sub, (first, 1), (second, 1))
    assert len(queued_for_workers(sub)) == 2
    # When their queue is paused and the subscriber looks at its waiting work
    pause(sub, "queue", "default")
    sub.pauses.tick(sub.pending, sub.active)
    # Then both are back in the outbox at their attempt counts, acked, and nothing waits here
    assert [sub.dbs.jobs.get(i).status for i in (first, second)] == ["pending", "pending"]
    assert sub.intake.acked == deliveries and queued_for_workers(sub) == [] and sub.active == {}


def test_with_the_database_down_a_paused_delivery_waits_unacked_until_it_is_written(sub, monkeypatch):
    # Given a paused queue and a database that refuses the give-back
    jid = new_job(sub)
    pause(sub, "queue", "default")
    give_back = sub.pauses._give_back

    def refuse(_attempts):
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database is down"))
    monkeypatch.setattr(sub.pauses, "_give_back", refuse)
    # When its delivery arrives / Then it is neither run nor acked
    (d,) = deliver(sub, (jid, 1))
    assert sub.intake.acked == [] and queued_for_workers(sub) == []
    assert sub.dbs.jobs.get(jid).status == "queued"
    # When the database is back and the retry is due / Then it is given back, and acked
    monkeypatch.setattr(sub.pauses, "_give_back", give_back)
    monkeypatch.setattr(sub.pauses, "_retry_at", 0.0)
    sub.pauses.tick(sub.pending, sub.active)
    assert sub.intake.acked == [d] and sub.dbs.jobs.get(jid).status == "pending"


def test_a_delivery_relayed_at_the_resume_runs_though_this_process_read_the_pause_before(sub):
    # Given this subscriber read account acme as paused, and acme resumed since (the publisher,
    # which reads the pauses every pass, relayed its job at once)
    from enstratus_workers.db.pauses import PauseStore

    jid = sub.dbs.jobs.submit(NewJob("echo", "{}", "default", 5, account="acme"))[0].job_id
    sub.dbs.jobs.relay_pending(100, lambda batch: None)
    pause(sub, "account", "acme")
    assert sub.pauses.holds("default", "acme")
    sub.pauses.ttl = 60
    PauseStore(sub.dbs.provisioning, known_queue=lambda _q: True).resume("account", "acme")
    # When its delivery arrives / Then it runs: not given back to bounce between the two
    deliver(sub, (jid, 1))
    assert [t.job_id for t in queued_for_workers(sub)] == [jid] and sub.pauses.given_back == 0


def _events(sub, jid):
    with sub.dbs.analytics.connect() as conn:
        return conn.execute(sa.text("SELECT attempt, outcome, duration_ms, worker, host FROM enstratus_job_event "
                                    "WHERE job_id = :j"), {"j": jid}).all()


def test_a_copy_of_an_attempt_whose_recorder_died_before_writing_its_event_gets_the_event(sub):
    # Given attempt 1 recorded succeeded by a subscriber on host9 that died before its event write
    jid = new_job(sub)
    sub.dbs.jobs.mark_started([Started(jid, 1, "default@host9.1", 1_000, "sub@host9:7:ab")])
    sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "default@host9.1", 1_000, 1_250, "null", None,
                                          "sub@host9:7:ab")])
    assert _events(sub, jid) == []
    # When its unacked message is delivered here
    (d,) = deliver(sub, (jid, 1))
    # Then the event is written from the row, as the dead recorder would have, and the copy acked
    assert _events(sub, jid) == [(1, "succeeded", 250, "default@host9.1", "host9")]
    assert sub.intake.acked == [d] and sub.stats["stale"] == 1 and queued_for_workers(sub) == []
    # And another copy finds it and writes nothing more
    (again,) = deliver(sub, (jid, 1))
    assert len(_events(sub, jid)) == 1 and sub.intake.acked == [d, again]


def test_a_copy_of_an_attempt_whose_live_recorder_has_not_written_its_event_waits_for_it(sub, monkeypatch):
    # Given attempt 1 recorded by a live subscriber whose event write waits out an outage
    jid = new_job(sub)
    sub.dbs.heartbeats.beat("subscriber", "other", ttl_s=30, details={"owner": "other@h:1:aa"})
    sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "failed", "w", 1, 2, None, "boom", "other@h:1:aa")])
    # When a copy arrives here, it waits, unsettled, and no event is written here
    (d,) = deliver(sub, (jid, 1))
    assert sub.intake.acked == [] and len(sub._held) == 1 and _events(sub, jid) == []
    # And once the recorder wrote its event, the copy is acked: one event, the recorder's
    sub.dbs.events.record([Event(jid, "echo", "default", 1, "failed", 1, "w", 2, host="h")])
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [d] and sub._held == [] and len(_events(sub, jid)) == 1


def test_a_copy_waits_for_a_live_recorders_event_no_longer_than_the_patience(sub, monkeypatch):
    # Given attempt 1 recorded by a live subscriber that never writes its event (it dropped it)
    jid = new_job(sub)
    sub.dbs.heartbeats.beat("subscriber", "other", ttl_s=30, details={"owner": "other@h:1:aa"})
    sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "w", 1, 2, "null", None, "other@h:1:aa")])
    now = [1000.0]
    sub.lost_events.clock = lambda: now[0]
    (d,) = deliver(sub, (jid, 1))
    assert sub.intake.acked == [] and len(sub._held) == 1
    # When the patience has run out, the copy is acked without an event being made up here
    now[0] += lost_events.PATIENCE_S
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [d] and sub._held == [] and _events(sub, jid) == []


def test_a_missing_event_that_cannot_be_written_is_held_through_an_outage_and_given_up_if_refused(sub, monkeypatch):
    from enstratus_workers.errors import DatabaseError

    # Given two attempts recorded by a dead subscriber without their events
    jobs = [new_job(sub), new_job(sub)]
    for jid in jobs:
        sub.dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "w", 1, 2, "null", None, "gone@h:1:aa")])
    now = [1000.0]
    sub.lost_events.clock = lambda: now[0]

    def fails(cause):
        def record(events):
            try:
                raise cause
            except Exception as exc:
                raise DatabaseError("could not record") from exc
        return record

    # When the analytics database is away, the copy is held, however long that lasts
    monkeypatch.setattr(sub.dbs.events, "record", fails(sa.exc.OperationalError("INSERT", {}, Exception(2013))))
    (d1,) = deliver(sub, (jobs[0], 1))
    now[0] += 10 * lost_events.PATIENCE_S
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [] and len(sub._held) == 1
    # And once it is back, the event is written and the copy acked
    monkeypatch.undo()
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [d1] and len(_events(sub, jobs[0])) == 1
    # When the database refuses an event (its data), the copy is held for the patience, then acked
    monkeypatch.setattr(sub.dbs.events, "record", fails(sa.exc.DataError("INSERT", {}, Exception(1406))))
    (d2,) = deliver(sub, (jobs[1], 1))
    assert sub.intake.acked == [d1] and len(sub._held) == 1
    now[0] += lost_events.PATIENCE_S
    sub._held_until = 0.0
    sub._check_deliveries()
    assert sub.intake.acked == [d1, d2] and sub._held == []
