"""Cloud calls in turn (``cloud/limiter.py``): a short wait blocks, a long one defers the job, a
cancel ends a wait, a throttling answer slows the key and defers the job; and how a provider's
"slow down" is told from its other errors (``cloud/throttling.py``)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import LibcloudError, ProviderError

from enstratus_workers.actions.registry import ActionContext
from enstratus_workers.cloud.limiter import CloudLimiter
from enstratus_workers.cloud.rate_policy import Policy
from enstratus_workers.cloud.throttling import throttle_of
from enstratus_workers.config.settings import CloudLimitSettings, CloudRate, Secret, WorkerSettings
from enstratus_workers.db import open_databases
from enstratus_workers.db.cloud_rates import CloudRateStore
from enstratus_workers.errors import Cancelled, Deferred
from enstratus_workers.layout import Layout


class FakeDriver:
    """A provider whose ``list_nodes`` answers ``answers`` in turn (an exception is raised)."""

    type = "fake"

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def list_nodes(self):
        self.calls.append(time.monotonic())
        answer = self.answers.pop(0) if self.answers else ["node"]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def store(tmp_path):
    dbs = open_databases(WorkerSettings(provisioning_url=Secret("sqlite:///p.db"),
                                        analytics_url=Secret("sqlite:///a.db")), Layout(tmp_path))
    yield CloudRateStore(dbs.provisioning)
    dbs.close()


def limited(store, driver, rate, max_wait=5.0, cancelled=lambda: False, patient=False):
    settings = CloudLimitSettings(rate=100.0, rates=(CloudRate("fake", "42", rate),), max_wait=max_wait,
                                  recover_after=600.0)
    context = ActionContext(job_id=1, attempt=1, queue="default", worker="w", logger=logging.getLogger("t"),
                            cancel_check=cancelled)
    return CloudLimiter(settings, lambda: store).limit(driver, "fake", 42, context, patient=patient)


def row(store):
    return next(r for r in store.all() if (r.provider, r.account) == ("fake", "42"))


def test_a_call_waits_its_short_turn_and_other_attributes_are_the_drivers(store):
    # Given a key of 5 calls a second
    driver = FakeDriver()
    cloud = limited(store, driver, rate=5.0)
    # When three calls are made back to back / Then each waited its turn and went through
    assert [cloud.list_nodes() for _ in range(3)] == [["node"]] * 3
    assert driver.calls[2] - driver.calls[0] >= 0.35   # two intervals of 0.2 s, less clock slack
    assert (row(store).turns, row(store).deferrals) == (3, 0)
    # and the driver's plain attributes pass through; a method it lacks is absent
    assert cloud.type == "fake" and not hasattr(cloud, "ex_authorize_ingress")


def test_a_turn_beyond_the_wait_defers_the_job_without_calling(store):
    # Given a key of one call every 4 s that may wait 1 s, whose turn was just taken
    driver = FakeDriver()
    cloud = limited(store, driver, rate=0.25, max_wait=1.0)
    cloud.list_nodes()
    # When the next call asks / Then its job is deferred for about the wait, the provider not called
    with pytest.raises(Deferred) as raised:
        cloud.list_nodes()
    assert 3.0 <= raised.value.delay_s <= 6.0 and len(driver.calls) == 1
    assert "cloud API limit of fake account 42: its next turn is in" in raised.value.reason
    assert row(store).deferrals == 1


def test_a_cancel_ends_the_wait_for_a_turn(store):
    # Given a key of one call every 20 s whose turn was just taken
    driver, cancel_at = FakeDriver(), time.monotonic() + 0.3
    cloud = limited(store, driver, rate=0.05, max_wait=30.0, cancelled=lambda: time.monotonic() > cancel_at)
    cloud.list_nodes()
    # When the job is cancelled while the next call waits / Then the wait ends, nothing called
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        cloud.list_nodes()
    assert time.monotonic() - t0 < 15 and len(driver.calls) == 1


def test_a_throttle_slows_the_key_and_defers_the_job_for_the_retry_after(store):
    # Given a provider that answers 429 with Retry-After: 7
    driver = FakeDriver(RateLimitReachedError(headers={"retry-after": "7"}))
    cloud = limited(store, driver, rate=8.0)
    # When a call is throttled / Then the job is deferred for 7 s, saying why
    with pytest.raises(Deferred) as raised:
        cloud.list_nodes()
    assert raised.value.delay_s == 7.0 and "throttled by fake account 42: RateLimitReachedError" in raised.value.reason
    # and the key is halved and held for the fleet
    r = row(store)
    assert (r.throttles, r.state.rate) == (1, 4.0)
    assert not store.take_turn("fake", "42", Policy(8.0, max_wait_s=5.0, recover_after_s=600.0)).granted


def test_a_throttle_without_retry_after_defers_at_least_a_second_and_other_errors_pass(store):
    cloud = limited(store, FakeDriver(BaseHTTPError(429, "slow down"), LibcloudError("boom")), rate=8.0)
    with pytest.raises(Deferred) as raised:
        cloud.list_nodes()
    assert raised.value.delay_s >= 1.0
    with pytest.raises(LibcloudError, match="boom"):
        cloud.list_nodes()


def test_a_compensation_waits_out_a_throttle_and_a_cancel_and_calls_again(store):
    # Given a compensation's calls (patient), on a cancelled job, and a provider that throttles once
    driver = FakeDriver(RateLimitReachedError(headers={"retry-after": "1"}), ["gone"])
    cloud = limited(store, driver, rate=8.0, cancelled=lambda: True, patient=True)
    # When it calls / Then it waited the Retry-After and called again, neither deferred nor stopped
    assert cloud.list_nodes() == ["gone"]
    assert len(driver.calls) == 2 and driver.calls[1] - driver.calls[0] >= 0.9
    assert row(store).throttles == 1


@pytest.mark.parametrize("exc, retry_after", [
    (RateLimitReachedError(headers={"retry-after": "12"}), 12.0),
    (RateLimitReachedError(), 0.0),
    (BaseHTTPError(429, "Too Many Requests", {"Retry-After": "3"}), 3.0),
    (ProviderError("over the limit", 429), 0.0),
    (BaseHTTPError(503, "busy", {"retry-after": "5"}), 5.0),
    (LibcloudError("<Error><Code>RequestLimitExceeded</Code></Error>"), 0.0),
    (Exception("ThrottlingException: Rate exceeded"), 0.0),
    (BaseHTTPError(429, "x", {"retry-after": "soon"}), 0.0),
])
def test_throttling_answers_are_recognised_with_their_retry_after(exc, retry_after):
    throttle = throttle_of(exc)
    assert throttle is not None and throttle.retry_after_s == retry_after


def test_a_retry_after_date_is_seconds_from_now_and_other_errors_are_no_throttle():
    in_a_minute = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert 55 <= throttle_of(BaseHTTPError(429, "x", {"retry-after": in_a_minute})).retry_after_s <= 61
    for other in (BaseHTTPError(503, "down"), ProviderError("bad request", 400), LibcloudError("unknown image"),
                  OSError("connection refused")):
        assert throttle_of(other) is None
