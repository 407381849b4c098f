"""End to end: a burst of launches against a local cloud that throttles below the configured rate.

The real daemons, the KM and the local cloud, as an operator runs them: the account's credential
tells the local cloud to take LIMIT calls a second (in a bucket of BURST), while
``worker.properties`` lets the key make RATE, more than the cloud takes. The service must slow
itself to the cloud's limit -- both worker processes of the subscriber drawing from the one
budget in the provisioning DB -- and every job must succeed at its first attempt: a throttled
launch is deferred, not failed. The cloud's own request log is the measure.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ACCOUNT = "acct-limited"
STATE_DIR = "services/worker/data/local-cloud-limited"
LIMIT, BURST, RATE = 8, 2, 20     # the cloud's calls a second and bucket; the configured rate
LAUNCHES = 10


@pytest.fixture
def limited_home(tmp_path):
    from tests.e2e.test_cloud_pinger import running_home

    props = {"schedule.server.sync.interval": 0, f"cloud.rate.local.{ACCOUNT}": RATE,
             "worker.default.min": 2, "worker.default.max": 2}
    for home in running_home(tmp_path, props):
        with sh.km_client(home) as km:
            km.put(ACCOUNT, "cloud", "local-secret-" + secrets.token_urlsafe(16),
                   metadata={"provider": "local", "key": "acct-limited-key", "state_dir": STATE_DIR,
                             "rate_limit": LIMIT, "rate_burst": BURST})
        yield home


@pytest.fixture
def dbs(limited_home):
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    dbs = open_databases(load_settings(Layout(limited_home)).worker, Layout(limited_home))
    yield dbs
    dbs.close()


def scrape_cloud_metrics(home, dbs) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from enstratus_workers.config import load_settings
    from enstratus_workers.layout import Layout
    from enstratus_workers.metrics import make_registry

    registry = make_registry(load_settings(Layout(home)), Layout(home), dbs=dbs, depths=lambda queues: [])
    return {s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples if s.name.startswith("enstratus_workers_cloud_") and s.labels.get("account") == ACCOUNT}


def test_a_burst_of_launches_slows_to_the_clouds_limit_and_every_job_succeeds_first_time(limited_home, dbs, capsys):
    from enstratus_workers import cli
    from enstratus_workers.cloud.local_throttle import read_log
    from enstratus_workers.db import NewJob

    home = limited_home
    # Given a burst of launches on the limited account
    t0 = time.monotonic()
    ids = [dbs.jobs.submit(NewJob("server.launch", json.dumps({
        "account": ACCOUNT, "image": "local-agent", "size": "small", "name": f"burst{i}"}), "default", 3))[0].job_id
        for i in range(LAUNCHES)]
    # When the service works them off
    done = sh.wait_until(lambda: all(dbs.jobs.get(i).status not in ("pending", "queued", "running") for i in ids),
                         120, 0.5)
    took = time.monotonic() - t0
    jobs = [dbs.jobs.get(i) for i in ids]
    assert done, [(j.job_id, j.status, j.attempts, j.error) for j in jobs]
    # Then every job succeeded at its first attempt, the throttled ones deferred rather than failed
    assert [(j.status, j.attempts) for j in jobs] == [("succeeded", 1)] * LAUNCHES, \
        [(j.job_id, j.status, j.attempts, j.error) for j in jobs]
    assert sum(j.deferrals for j in jobs) > 0
    # and both worker processes of the subscriber ran launches, from the one budget
    assert len({j.worker for j in jobs}) == 2, [j.worker for j in jobs]
    # and the cloud saw the service slow down to its limit: after the first throttle, the rate of
    # every call it received (refused ones too) stays within what its bucket admits
    log = read_log(home / STATE_DIR)
    first_refusal = next(t for t, _, ok in log if not ok)
    window = [t for t, _, _ in log if t > first_refusal + 1.0]
    span = window[-1] - window[0]
    assert len(window) <= LIMIT * span + BURST, (len(window), span)
    refused = sum(1 for _, _, ok in log if not ok)
    before = [t for t, _, _ in log if t <= first_refusal]
    summary = (f"\n{LAUNCHES} launches in {took:.1f} s, {len(log)} calls to the cloud ({refused} refused with 429); "
               f"before the first throttle {(len(before) - 1) / max(1e-3, first_refusal - log[0][0]):.1f} calls/s; "
               f"after it (from 1 s on, {span:.1f} s) {len(window) / span:.2f} calls/s = "
               f"{len(window) / span / LIMIT:.2f} x the limit of {LIMIT}/s (configured {RATE}/s); "
               f"deferrals {sum(j.deferrals for j in jobs)}")
    # and the key's slowdown is on the metrics and in the status, for the operator
    cli.main(["--home", str(home), "status"])
    assert f"cloud API key local account {ACCOUNT}: slowed to " in capsys.readouterr().out
    m = scrape_cloud_metrics(home, dbs)
    assert m["enstratus_workers_cloud_rate_configured"] == RATE
    assert m["enstratus_workers_cloud_rate"] <= LIMIT and m["enstratus_workers_cloud_throttles_total"] >= 1
    assert m["enstratus_workers_cloud_requests_total"] >= LAUNCHES * 5
    with capsys.disabled():
        print(summary)
