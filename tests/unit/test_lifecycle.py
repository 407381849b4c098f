"""A job's life: every transition rule, as a table of (what the row reads, what comes next)."""

from __future__ import annotations

import pytest

from enstratus_workers.db import schema
from enstratus_workers.jobs import lifecycle as L

ME, OTHER = "subscriber@a:1:aa", "subscriber@b:2:bb"


def test_the_statuses_are_the_designs_and_the_schema_reads_them_from_here():
    assert L.STATUSES == ("pending", "queued", "running", "succeeded", "failed", "dead", "cancelled")
    assert set(L.ACTIVE) | set(L.TERMINAL) == set(L.STATUSES) and not set(L.ACTIVE) & set(L.TERMINAL)
    assert set(L.OPEN) < set(L.ACTIVE)
    assert (schema.STATUSES, schema.ACTIVE, schema.TERMINAL, schema.DEAD) == (
        L.STATUSES, L.ACTIVE, L.TERMINAL, L.DEAD)


@pytest.mark.parametrize("attempt_status, retryable, attempt, max_attempts, job_status, event", [
    ("succeeded", False, 1, 3, "succeeded", "succeeded"),
    ("succeeded", True, 3, 3, "succeeded", "succeeded"),
    ("failed", False, 1, 3, "failed", "failed"),       # the action said it cannot succeed
    ("failed", True, 1, 3, "pending", "retry"),        # may be transient: retried
    ("failed", True, 2, 3, "pending", "retry"),
    ("failed", True, 3, 3, "dead", "dead"),            # out of attempts
    ("failed", True, 1, 1, "dead", "dead"),
    ("failed", True, 4, 3, "dead", "dead"),            # beyond the last (a re-drive lowered it)
])
def test_status_after_an_attempt(attempt_status, retryable, attempt, max_attempts, job_status, event):
    assert L.job_status_after(attempt_status, retryable, attempt, max_attempts) == job_status
    assert L.event_outcome(job_status) == event


@pytest.mark.parametrize("attempts_done, attempt, delay_ms", [
    (0, 1, 0),              # a first attempt is not held back
    (1, 2, 1_000),
    (2, 3, 2_000),
    (3, 4, 4_000),
    (8, 9, 128_000),
    (9, 10, 256_000),
    (10, 11, 300_000),      # capped at 5 min
    (50, 51, 300_000),
    (10_000, 10_001, 300_000),
])
def test_next_attempt_and_its_broker_held_delay(attempts_done, attempt, delay_ms):
    assert L.next_attempt(attempts_done) == (attempt, delay_ms)
    assert L.backoff_ms(attempts_done) == delay_ms


def test_the_retry_delays_are_few_and_fixed():
    # each distinct delay is a delay queue of its own: no jitter, and a handful of values
    delays = {L.next_attempt(n).delay_ms for n in range(1000)}
    assert delays == {0, *(1000 * 2 ** k for k in range(9)), 300_000}
    assert L.RETRY_BACKOFF.jitter is None


@pytest.mark.parametrize("status, attempts, owner, attempt, verdict", [
    ("pending", 0, None, 1, "run"),        # open: relayed as attempt 1
    ("queued", 0, None, 1, "run"),         # open: the publisher's confirm beat its mark
    ("queued", 2, OTHER, 3, "run"),        # a retry, still naming the previous attempt's owner
    ("pending", 0, None, 2, "stale"),      # not this attempt
    ("pending", 1, OTHER, 1, "stale"),     # a retry recorded: attempt 1 is closed
    ("running", 1, ME, 1, "run"),          # held by me
    ("running", 1, OTHER, 1, "foreign"),   # held by another: take over only if its beat expired
    ("running", 1, None, 1, "foreign"),    # held by an older release's row
    ("running", 2, ME, 1, "stale"),        # a later attempt
    ("succeeded", 1, ME, 1, "stale"),      # an outcome recorded
    ("dead", 3, ME, 3, "stale"),
    ("cancelled", 0, None, 1, "stale"),
])
def test_who_may_write_an_attempt(status, attempts, owner, attempt, verdict):
    assert L.attempt_verdict(status, attempts, owner, attempt, ME) == verdict


@pytest.mark.parametrize("attempts, max_attempts, status, kept", [
    (1, 3, "pending", 1),    # a running attempt lost: relayed again as attempt 2
    (2, 3, "pending", 2),
    (3, 3, "dead", 3),       # it was the last
    (5, 3, "dead", 5),
    (0, 3, "pending", 1),    # a first attempt lost from the queue counts
])
def test_a_lost_attempt(attempts, max_attempts, status, kept):
    assert L.after_lost(attempts, max_attempts) == (status, kept)


@pytest.mark.parametrize("attempts, extra, max_attempts", [
    (3, 3, 6),
    (1, 5, 6),
    (7, 1, 8),
])
def test_a_re_driven_job_gets_more_attempts_than_it_has_had(attempts, extra, max_attempts):
    assert L.redrive_max_attempts(attempts, extra) == max_attempts
    # and the next attempt it is relayed as is then open and not its last unless extra is 1
    assert L.job_status_after("failed", True, L.next_attempt(attempts).attempt, max_attempts) == (
        "dead" if extra == 1 else "pending")


@pytest.mark.parametrize("status, requested, verdict", [
    ("pending", False, "cancelled"),     # never started: ends now
    ("queued", False, "cancelled"),      # its message becomes a stale duplicate
    ("running", False, "stopping"),      # its owner tells the worker
    ("running", True, "stopping"),       # asked again: the first request stands
    ("pending", True, "stopping"),       # back in the outbox to carry its compensation
    ("succeeded", False, "finished"), ("failed", False, "finished"), ("dead", False, "finished"),
    ("cancelled", True, "finished"),
])
def test_what_a_cancel_does_to_each_status(status, requested, verdict):
    assert L.cancel_verdict(status, requested) == verdict


def test_a_lost_attempt_with_a_cancel_requested_is_never_retried_nor_dead():
    # Given a job at its last attempt whose owner died while a cancel was requested
    # Then it goes back to the outbox only to carry its compensation, relayed at once
    assert L.after_lost(3, 3, cancel_requested=True) == ("pending", 3)
    assert L.next_attempt(3, cancel_requested=True) == (4, 0)
    assert L.after_lost(3, 3) == ("dead", 3)


def test_a_deferral_uses_no_attempt_and_holds_the_relay_until_its_time():
    # Given attempt 2 deferred for 30 s at t = 1,000,000 ms
    d = L.after_deferral(2, 30_000, 1_000_000)
    # Then the row goes back to 1 attempt, and the next relay (attempt 2 again) is held for
    # what is left of the 30 s, not for the retry backoff
    assert d == (1, 1_030_000) and L.attempts_after(2, deferred=True) == 1
    assert L.next_attempt(1, d.not_before_ms, now_ms=1_010_000) == (2, 20_000)
    assert L.next_attempt(1, d.not_before_ms, now_ms=1_040_000) == (2, 0)      # due already
    assert L.event_outcome("pending", deferred=True) == "deferred"
    # and the hold is bounded by what a broker can hold
    assert L.after_deferral(1, 10**15, 0).not_before_ms == L.MAX_DEFER_MS
