"""Cancel and deferral in the job store, on the embedded SQLite and a real MariaDB.

A cancel is decided by the row alone: a job that has not started ends ``cancelled`` at once, a
running one is asked to stop (its owner finds the request), a finished one is left alone. A
deferred attempt is not counted and holds the next relay back; a cancelled job takes no other
outcome of any attempt.
"""

from __future__ import annotations

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Outcome, Started
from enstratus_workers.db.jobs import StuckAttempt
from tests.contract.test_jobs_db import dbs, job  # noqa: F401  (the fixture, on both databases)

ME = "subscriber@a:1:aaaa"


def _running(dbs, attempt=1) -> int:
    j = dbs.jobs.submit(job())[0]
    dbs.jobs.relay_pending(10, lambda batch: None)
    dbs.jobs.mark_started([Started(j.job_id, attempt, "w@h.1", now_ms(), ME)])
    return j.job_id


def test_a_pending_or_queued_job_is_cancelled_at_once_and_counted(dbs):
    # Given a queued job (its message on the broker) and a pending one
    queued = dbs.jobs.submit(job())[0].job_id
    pending = dbs.jobs.submit(job())[0].job_id
    dbs.jobs.relay_pending(1, lambda batch: None)   # the oldest first
    assert (dbs.jobs.get(queued).status, dbs.jobs.get(pending).status) == ("queued", "pending")
    # When both are cancelled
    answers = [dbs.jobs.cancel(i) for i in (pending, queued)]
    # Then both ended cancelled now, with the time of the request, and the total counts them
    assert [a.verdict for a in answers] == ["cancelled", "cancelled"]
    for a in answers:
        assert a.job.status == "cancelled" and a.job.cancel_requested_ms == a.job.end_timestamp
    assert dbs.jobs.counts()["cancelled"] == 2 and dbs.jobs.counts()["pending"] == 0
    # and the queued one's delivery is now a stale duplicate, the pending one is never relayed
    row = dbs.jobs.delivery_rows([queued])[queued]
    assert row.verdict(1, ME) == "stale"
    assert dbs.jobs.relay_pending(10, lambda batch: None) == 0


def test_a_running_job_is_asked_to_stop_and_its_owner_finds_the_request(dbs):
    # Given a running job and another one
    running, other = _running(dbs), _running(dbs)
    # When it is cancelled (twice: the second changes nothing)
    first = dbs.jobs.cancel(running)
    again = dbs.jobs.cancel(running)
    # Then it is still running, with the request's time kept from the first
    assert first.verdict == again.verdict == "stopping"
    assert first.job.status == "running" and again.job.cancel_requested_ms == first.job.cancel_requested_ms
    # and its owner's look over the jobs it holds finds it, and only it
    assert dbs.jobs.cancels_among([running, other, 999_999]) == {running: ("running", 1)}
    # When the owner records the attempt cancelled
    done = Outcome(running, 1, "cancelled", "w@h.1", 1, 2, '{"terminated": "srv-1"}', None, ME)
    assert dbs.jobs.record_outcomes([done]) == [done]
    # Then it ended cancelled with what was cleaned up, counted once
    after = dbs.jobs.get(running)
    assert (after.status, after.result, after.attempts) == ("cancelled", '{"terminated": "srv-1"}', 1)
    assert dbs.jobs.counts()["cancelled"] == 1


def test_a_finished_or_unknown_job_is_not_changed(dbs):
    # Given a succeeded job
    jid = dbs.jobs.submit(job())[0].job_id
    dbs.jobs.record_outcomes([Outcome(jid, 1, "succeeded", "w", 1, 2, "{}", None, ME)])
    # When it is cancelled / Then nothing changes and the answer says it finished
    answer = dbs.jobs.cancel(jid)
    assert answer.verdict == "finished" and answer.job.status == "succeeded"
    assert answer.job.cancel_requested_ms is None and dbs.jobs.counts()["cancelled"] == 0
    # and a job that does not exist is unknown
    assert dbs.jobs.cancel(987_654).verdict == "unknown" and dbs.jobs.cancel(987_654).job is None


def test_a_cancelled_job_takes_no_other_outcome_and_its_cancels_only_once(dbs):
    # Given a queued job handed to a worker (not yet marked running) when the cancel landed
    jid = dbs.jobs.submit(job())[0].job_id
    dbs.jobs.relay_pending(10, lambda batch: None)
    assert dbs.jobs.cancel(jid).verdict == "cancelled"
    # When the attempt's success, failure or retry comes in / Then none takes effect
    for status in ("succeeded", "failed", "pending", "dead"):
        assert dbs.jobs.record_outcomes([Outcome(jid, 1, status, "w", 1, 2, None, "x", ME)]) == []
    assert dbs.jobs.get(jid).status == "cancelled"
    # and no mark makes it running again
    dbs.jobs.mark_started([Started(jid, 1, "w@h.1", now_ms(), ME)])
    assert dbs.jobs.get(jid).status == "cancelled"
    # When the worker, told of the cancel, reports what its compensation cleaned up
    late = Outcome(jid, 1, "cancelled", "w", 1, 2, '{"cleaned": true}', None, ME)
    assert dbs.jobs.record_outcomes([late]) == [late]
    # Then the row keeps it, still cancelled and counted once; a second such outcome is refused
    assert (dbs.jobs.get(jid).result, dbs.jobs.counts()["cancelled"]) == ('{"cleaned": true}', 1)
    assert dbs.jobs.record_outcomes([Outcome(jid, 1, "cancelled", "w", 1, 3, "{}", None, ME)]) == []
    # and in a contested chunk (beside an outcome that is refused) it is not counted twice either
    other = dbs.jobs.submit(job())[0].job_id
    dbs.jobs.relay_pending(10, lambda batch: None)
    dbs.jobs.cancel(other)
    refused = Outcome(jid, 1, "succeeded", "w", 1, 4, None, None, ME)
    took = dbs.jobs.record_outcomes([refused, Outcome(other, 1, "cancelled", "w", 1, 2, "{}", None, ME)])
    assert [o.job_id for o in took] == [other] and dbs.jobs.counts()["cancelled"] == 2


def test_a_deferred_attempt_is_not_counted_and_holds_the_next_relay_back(dbs):
    # Given a job relayed as attempt 1 and running
    jid = _running(dbs)
    # When its action defers it for 30 s, three times over
    for n in range(3):
        end = now_ms()
        deferred = Outcome(jid, 1, "pending", "w", end - 5, end, None, "deferred 30s: throttled", ME,
                           not_before_ms=end + 30_000)
        assert dbs.jobs.record_outcomes([deferred]) == [deferred]
        row = dbs.jobs.get(jid)
        # Then it is pending at the attempts it had before, held until then, the reason shown
        assert (row.status, row.attempts, row.deferrals, row.error) == ("pending", 0, n + 1,
                                                                       "deferred 30s: throttled")
        assert row.not_before_ms == end + 30_000
        # and the relay publishes the same attempt again, held by the broker for what is left
        seen = []
        assert dbs.jobs.relay_pending(10, seen.extend) == 1
        nxt = seen[0].next_attempt(end)
        assert (nxt.attempt, nxt.delay_ms) == (1, 30_000)
        dbs.jobs.mark_started([Started(jid, 1, "w@h.1", now_ms(), ME)])
    # When it then succeeds / Then it has had one attempt, and the hold is gone
    ok = Outcome(jid, 1, "succeeded", "w", 1, 2, "{}", None, ME)
    assert dbs.jobs.record_outcomes([ok]) == [ok]
    row = dbs.jobs.get(jid)
    assert (row.status, row.attempts, row.deferrals, row.not_before_ms) == ("succeeded", 1, 3, None)


def test_a_lost_attempt_with_a_cancel_requested_goes_back_only_for_its_compensation(dbs):
    # Given a running job at its last attempt whose cancel was requested, its owner gone
    jid = _running(dbs)
    dbs.jobs.cancel(jid)
    row = dbs.jobs.get(jid)
    stuck = dbs.jobs.stuck_cancelling(now_ms() + 1)
    assert [s.job_id for s in stuck] == [jid] and stuck[0].cancel_requested_ms == row.cancel_requested_ms
    lost = StuckAttempt(jid, "running", row.start_timestamp, 1, 1, "default", "w@h.1", ME,
                        row.cancel_requested_ms)
    # When recovery puts it back
    assert dbs.jobs.recover(lost, "stuck: owner gone") == "pending"
    # Then it is not dead (its attempts are spent) but relayed at once, for its compensation
    seen = []
    dbs.jobs.relay_pending(10, seen.extend)
    assert seen[0].next_attempt(now_ms()) == (2, 0)
    # and a second cancel only says it is stopping
    assert dbs.jobs.cancel(jid).verdict == "stopping"
    # When the compensation's outcome comes in / Then it ends cancelled
    done = Outcome(jid, 2, "cancelled", "w", 1, 2, "null", None, ME)
    assert dbs.jobs.record_outcomes([done]) == [done]
    assert dbs.jobs.get(jid).status == "cancelled" and dbs.jobs.counts()["cancelled"] == 1


def test_cancelled_jobs_are_pruned_after_their_period_and_still_counted(dbs):
    from enstratus_workers.db.retention import Periods, Pruner

    # Given a job cancelled a minute ago and one cancelled now
    old, new = dbs.jobs.submit(job())[0].job_id, dbs.jobs.submit(job())[0].job_id
    for job_id in (old, new):
        dbs.jobs.cancel(job_id)
    with dbs.provisioning.begin() as conn:
        conn.exec_driver_sql(f"UPDATE enstratus_job SET end_timestamp = {now_ms() - 60_000} WHERE job_id = {old}")
    # When retention keeps cancelled jobs 30 s
    pruner = Pruner(dbs.provisioning, dbs.analytics, Periods(0, 0, 0, 0, cancelled=30), "pinger@t:1:aa")
    while pruner.step():
        pass
    # Then the old one is gone, the new one kept, and both are still counted
    assert (dbs.jobs.get(old), dbs.jobs.get(new).status) == (None, "cancelled")
    assert pruner.deleted == {"cancelled": 1} and dbs.jobs.counts()["cancelled"] == 2
