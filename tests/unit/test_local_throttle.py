"""The local cloud told to throttle (``cloud/local_throttle.py``), and the cloud actions on it:
a launch throttled half-way is deferred, and comes back to the one server it started."""

from __future__ import annotations

import dataclasses
import time

import pytest
from libcloud.common.exceptions import RateLimitReachedError

from enstratus_workers.cloud.actions import launch_server
from enstratus_workers.cloud.drivers import open_driver
from enstratus_workers.cloud.limiter import CloudLimiter
from enstratus_workers.cloud.local_driver import LocalNodeDriver
from enstratus_workers.cloud.local_throttle import read_log
from enstratus_workers.config.settings import CloudLimitSettings, Secret, WorkerSettings
from enstratus_workers.db import open_databases
from enstratus_workers.db.cloud_rates import CloudRateStore
from enstratus_workers.errors import ActionError, Deferred
from enstratus_workers.layout import Layout
from tests.unit.test_cloud_actions import (LAUNCH, SECRET, FakeCredential, cloud, home, km,  # noqa: F401
                                           make_context, store)
from tests.unit.test_local_driver import state_dir  # noqa: F401  (the fixture: agents killed after)


def test_beyond_its_limit_the_local_cloud_answers_429_with_a_retry_after(state_dir):
    # Given two drivers of one local cloud limited to 1 call a second, in a bucket of 2
    a, b = (LocalNodeDriver("k", "s", ex_state_dir=state_dir, ex_rate_limit=1, ex_rate_burst=2) for _ in range(2))
    # When three calls are made at once, from either / Then the third is refused as a provider does
    a.list_nodes()
    b.list_sizes()
    with pytest.raises(RateLimitReachedError) as refused:
        a.list_images()
    assert refused.value.code == 429 and refused.value.retry_after >= 1
    # and its request log says what it answered, in order
    assert [(call, ok) for _, call, ok in read_log(state_dir)] == [
        ("list_nodes", True), ("list_sizes", True), ("list_images", False)]
    # and a driver without a limit never throttles
    plain = LocalNodeDriver("k", "s", ex_state_dir=state_dir)
    assert [plain.list_sizes() for _ in range(5)] and len(read_log(state_dir)) == 3


@pytest.mark.parametrize("knob, value", [("rate_limit", "fast"), ("rate_limit", 0), ("rate_burst", -1)])
def test_a_bad_throttle_knob_in_the_credential_is_an_action_error(make_context, km, knob, value):
    km.credentials[("9", "cloud")] = FakeCredential(Secret(SECRET.encode()), {
        "provider": "local", "key": "acct-9", "rate_limit": 1, knob: value})
    with pytest.raises(ActionError, match=f"{knob} must be a number above 0"):
        open_driver(make_context(), "9")


def test_a_launch_throttled_half_way_is_deferred_and_comes_back_to_its_server(make_context, km, home, cloud):
    # Given a local cloud that takes 1 call a second (bucket of 2) and a key configured at 4: the
    # launch's third call comes 0.5 s after its first, a token later than the cloud's refill.
    # (At 2 calls a second the third came a millisecond too soon: a loaded machine's slower
    # calls let the bucket refill, and the launch went through unthrottled.)
    km.credentials[("42", "cloud")] = dataclasses.replace(km.credentials[("42", "cloud")], metadata={
        "provider": "local", "key": "acct-42", "rate_limit": 1, "rate_burst": 2})
    dbs = open_databases(WorkerSettings(provisioning_url=Secret("sqlite:///p.db"),
                                        analytics_url=Secret("sqlite:///a.db")), Layout(home))
    try:
        rates = CloudRateStore(dbs.provisioning)
        limiter = CloudLimiter(CloudLimitSettings(rate=4.0, max_wait=5.0, recover_after=600.0), lambda: rates)
        context = dataclasses.replace(make_context(job_id=51), cloud_limits=limiter)
        # When the launch (5 calls) runs, and runs again after each deferral, as the publisher would
        deferrals, result = [], None
        while result is None and len(deferrals) < 10:
            try:
                result = launch_server(dict(LAUNCH), context)
            except Deferred as deferred:
                deferrals.append(deferred)
                time.sleep(deferred.delay_s)
        # Then it was deferred for the cloud's Retry-After, then succeeded with one server
        assert deferrals and all(d.delay_s >= 1 and "throttled by local account 42" in d.reason for d in deferrals)
        assert result["state"] == "running" and len(cloud().list_nodes()) == 1
        # and the key was slowed for the fleet, below the cloud's limit
        (key,) = rates.all()
        assert key.throttles == len(deferrals) and key.state.rate <= 2.0
    finally:
        dbs.close()
