"""The one backoff and the one clock."""

from __future__ import annotations

import random
import time

from enstratus_workers.backoff import Backoff, Retrying
from enstratus_workers.clock import now_ms


def test_delays_double_up_to_the_cap_without_jitter():
    b = Backoff(first=0.5, cap=4.0, jitter=None)
    assert [b.delay(n) for n in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(10_000) == 4.0        # no overflow for a long outage


def test_equal_jitter_stays_between_half_and_the_whole_delay():
    b = Backoff(first=1.0, cap=30.0, jitter="equal")
    rng = random.Random(7)
    for n in range(1, 10):
        base = min(30.0, 2 ** (n - 1))
        d = b.delay(n, rng)
        assert base / 2 <= d <= base


def test_full_jitter_spreads_a_fleet_over_the_whole_window():
    # Given 200 processes that lost the same server at once
    b = Backoff(first=1.0, cap=8.0, jitter="full")
    rng = random.Random(1)
    delays = [b.delay(4, rng) for _ in range(200)]
    # Then their third retry is spread over [0, 8] s, not piled on one instant
    assert min(delays) < 1.0 and max(delays) > 7.0 and len({round(d, 3) for d in delays}) > 150


def test_retrying_counts_failures_and_resets_on_success():
    r = Retrying(Backoff(first=0.5, cap=2.0, jitter=None))
    assert [r.failed(), r.failed(), r.failed(), r.failed()] == [0.5, 1.0, 2.0, 2.0]
    r.succeeded()
    assert r.failures == 0 and r.failed() == 0.5


def test_now_ms_is_the_wall_clock_in_milliseconds():
    before = int(time.time() * 1000)
    assert before - 1 <= now_ms() <= int(time.time() * 1000) + 1


def test_a_connection_counts_as_a_success_only_once_it_has_lasted():
    # Given a reconnect loop whose connections must last 30 s to count
    now = [0.0]
    r = Retrying(Backoff(first=0.5, cap=8.0, jitter=None), stable_after=30.0, clock=lambda: now[0])

    # When a server lets it in and drops it a second later, again and again
    delays = []
    for _ in range(4):
        r.succeeded()
        now[0] += 1.0
        delays.append(r.failed())
    # Then the delays grow as if it never got in
    assert delays == [0.5, 1.0, 2.0, 4.0]

    # When a connection lasts 30 s before it is lost
    r.succeeded()
    now[0] += 30.0
    # Then the count starts again
    assert r.failed() == 0.5
    # and a failure to connect at all (no succeeded between) still counts on
    assert r.failed() == 1.0
