"""The admin daemon publishes the jobs it is sent itself, right after their commit
(``jobs/direct.py``), where the relay would have sent them at once; no publisher runs here, so
a message on the queue is the admin's own."""

from __future__ import annotations

import json

import pytest

from enstratus_workers.mq import open_transport
from tests.unit.admin_helpers import Admin, home  # noqa: F401 - the fixture


@pytest.fixture
def api(home):  # noqa: F811 - the fixture imported above
    admin = Admin(home, direct=True)
    yield admin
    admin.close()


def on_the_queue(api, queue="default") -> list[dict]:
    """The messages waiting on ``queue`` (taken and given back)."""
    transport = open_transport(api.settings.mq, api.layout)
    try:
        consumer = transport.consumer([queue], prefetch=100)
        got = consumer.poll(0.5, 100)
        consumer.nack(got)
        consumer.close()
        return [json.loads(d.body) for d in got]
    finally:
        transport.close()


def test_a_job_posted_alone_is_on_its_queue_without_a_publisher_and_a_list_is_the_relays(api):
    # When a client posts one job, Then it is answered at its commit (pending)...
    r = api.call("POST", "/jobs", json={"action": "echo", "arguments": {"x": 1}})
    assert r.status_code == 201 and r.json()["job"]["status"] == "pending"
    one = r.json()["job"]["job_id"]
    # ...and then published by the admin itself: queued, its message on the queue
    assert api.ctx.dbs.jobs.direct.drain(10)
    assert api.call("GET", f"/jobs/{one}").json()["status"] == "queued"
    messages = on_the_queue(api)
    assert [(m["job_id"], m["attempt"]) for m in messages] == [(one, 1)]
    # When a list is posted, Then it is the relay's (pending, unclaimed): jobs that come many
    # at a time are carried many per pass by the relay, cheaper than one publish each here
    listed = [o["job"]["job_id"] for o in api.call("POST", "/jobs", json=[{"action": "noop"}] * 3).json()]
    assert api.ctx.dbs.jobs.direct.drain(10)
    assert {(api.ctx.dbs.jobs.get(i).status, api.ctx.dbs.jobs.get(i).claimed_until_ms) for i in listed} == \
        {("pending", None)}
    assert api.call("GET", "/jobs/stats").json()["counts"]["queued"] == 1


def test_a_job_for_a_paused_queue_is_left_pending_for_the_relay(api):
    # Given the default queue paused
    assert api.call("POST", "/queues/default/pause").status_code == 200
    # When a job is posted, Then it stays pending, unclaimed, and nothing is on the queue
    job_id = api.call("POST", "/jobs", json={"action": "noop"}).json()["job"]["job_id"]
    assert api.ctx.dbs.jobs.direct.drain(10)
    row = api.ctx.dbs.jobs.get(job_id)
    assert (row.status, row.claimed_until_ms) == ("pending", None) and on_the_queue(api) == []


def test_direct_publishing_is_off_unless_admin_cfg_turns_it_on(home):  # noqa: F811
    from enstratus_workers.admin import load_admin_settings
    from enstratus_workers.errors import ConfigError
    from enstratus_workers.layout import Layout
    from tests import servicehome as sh

    # By default the daemon leaves every job to the relay (it costs the one-at-a-time rate)
    assert load_admin_settings(Layout(home)).direct_publish is False
    admin = Admin(home)
    try:
        assert admin.ctx.dbs.jobs.direct is None
    finally:
        admin.close()
    # admin.cfg turns it on, and a value that is not a boolean is refused, naming the key
    cfg = home / "services" / "worker" / "classes" / "admin.cfg"
    sh.set_keys(cfg, {"direct_publish": "true"})
    assert load_admin_settings(Layout(home)).direct_publish is True
    sh.set_keys(cfg, {"direct_publish": "sometimes"})
    with pytest.raises(ConfigError, match="direct_publish"):
        load_admin_settings(Layout(home))
