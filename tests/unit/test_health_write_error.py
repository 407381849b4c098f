"""A subscriber that cannot record outcomes makes the health CRITICAL, with the database's reason,
and the admin status shows it: jobs stalling behind a stuck write no longer look OK."""

from __future__ import annotations

import pytest

from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.daemons.pinger.health import Health, check_heartbeats
from enstratus_workers.db import open_databases
from enstratus_workers.errors import CHECK_CRITICAL, CHECK_OK
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.unit.test_admin_api import Admin, set_token

REASON = "OperationalError: (1114, \"The table 'enstratus_job' is full\")"


@pytest.fixture
def dbs(tmp_path):
    d = open_databases(WorkerSettings(), Layout(tmp_path))
    yield d
    d.close()


def test_a_live_subscriber_reporting_a_write_error_makes_health_critical_with_the_reason(dbs):
    # Given one subscriber that cannot write and one that can
    dbs.heartbeats.beat("subscriber", "alpha", ttl_s=30, details={"write_error": REASON})
    dbs.heartbeats.beat("subscriber", "beta", ttl_s=30, details={"write_error": None})
    # When the heartbeats are checked
    h = Health()
    check_heartbeats(dbs, h)
    # Then health is CRITICAL, naming the stuck subscriber and why, and only that one
    assert h.code == CHECK_CRITICAL
    assert h.problems == [f"subscriber alpha cannot record outcomes: {REASON}"]
    assert h.checks["write_errors"] == {"subscriber@alpha": REASON}
    assert f"CRITICAL - subscriber alpha cannot record outcomes: {REASON}" in h.line()


def test_writes_that_succeed_again_leave_health_ok(dbs):
    # Given a subscriber that reported a write error, then beat again with none
    dbs.heartbeats.beat("subscriber", "alpha", ttl_s=30, details={"write_error": REASON})
    dbs.heartbeats.beat("subscriber", "alpha", ttl_s=30, details={"write_error": None, "recording": 0})
    # When the heartbeats are checked
    h = Health()
    check_heartbeats(dbs, h)
    # Then nothing is wrong
    assert (h.code, h.problems, "write_errors" in h.checks) == (CHECK_OK, [], False)


def test_an_expired_heartbeat_is_a_dead_daemon_not_a_write_error(dbs):
    # Given a subscriber whose last heartbeat, carrying a write error, has expired
    dbs.heartbeats.beat("subscriber", "alpha", ttl_s=-1, details={"write_error": REASON})
    # When the heartbeats are checked
    h = Health()
    check_heartbeats(dbs, h)
    # Then it is reported as expired (a warning), not as recording outcomes now
    assert len(h.problems) == 1 and "heartbeat expired" in h.problems[0]
    assert "write_errors" not in h.checks


def test_the_admin_status_shows_which_subscriber_cannot_record_and_why(tmp_path):
    # Given an admin daemon and a subscriber beating with a write error
    home = sh.make_home(tmp_path)
    set_token(home)
    api = Admin(home)
    try:
        api.ctx.dbs.heartbeats.beat("subscriber", "alpha", ttl_s=30, details={"write_error": REASON})
        # When the status is read, as JSON and as the page
        status = api.call("GET", "/status").json()
        page = api.call("GET", "/ui/status").text
        # Then both say it is CRITICAL and why
        assert status["write_errors"] == {"subscriber@alpha": REASON}
        assert status["health"]["state"] == "CRITICAL"
        assert f"subscriber alpha cannot record outcomes: {REASON}" in status["health"]["problems"]
        assert "subscriber alpha cannot record outcomes: OperationalError: (1114, &quot;The table" in page
    finally:
        api.close()
