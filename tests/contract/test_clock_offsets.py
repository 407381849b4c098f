"""A host whose clock is off the database server's is seen and reported: its heartbeats carry
its own clock beside the server's, the fleet's hosts (``GET /hosts``, the status page) show the
offset, and ``pinger check`` warns of one of 2 s or more. What the hosts judge (heartbeats,
leases, the cloud keys' turns) is on the server's clock already; what they stamp on jobs is not."""

from __future__ import annotations

import json
import time

import pytest

from enstratus_workers.admin.hosts_html import hosts_fragment
from enstratus_workers.admin.models import HostOut
from enstratus_workers.config.settings import WorkerSettings
from enstratus_workers.daemons.pinger.health import Health, check_heartbeats
from enstratus_workers.db import open_databases
from enstratus_workers.db.heartbeats import HOST_CLOCK_KEY, Heartbeat, HeartbeatStore, clock_offsets
from enstratus_workers.errors import CHECK_OK, CHECK_WARNING
from enstratus_workers.fleet.hosts import fleet_view
from enstratus_workers.fleet.hosts_text import host_line
from enstratus_workers.layout import Layout
from tests.contract.test_dead_host_jobs import _clock_off_by

HOUR_MS = 3_600_000
SLACK_MS = 2_000   # the write's round trip and the test's own steps


def _beat_as(dbs, host: str, off_s: float, daemon: str = "subscriber", ttl_s: float = 60) -> None:
    with _clock_off_by(off_s):
        HeartbeatStore(dbs.provisioning, host).beat(daemon, f"{daemon}@{host}", ttl_s=ttl_s)


@pytest.mark.mysql
def test_a_host_an_hour_off_is_shown_and_warned_of_and_one_on_time_is_not(mariadb_dbs):
    dbs = mariadb_dbs
    # Given three hosts on one MariaDB: one an hour ahead, one an hour behind, one on time
    _beat_as(dbs, "ahead", 3600)
    _beat_as(dbs, "behind", -3600)
    _beat_as(dbs, "ontime", 0)
    _beat_as(dbs, "ontime", 0, daemon="publisher")
    # When the fleet is looked at
    hosts = {h.name: h for h in fleet_view(dbs)}
    # Then each host's offset is its clock's, within the write's round trip
    assert abs(hosts["ahead"].clock_offset_ms - HOUR_MS) < SLACK_MS
    assert abs(hosts["behind"].clock_offset_ms + HOUR_MS) < SLACK_MS
    assert abs(hosts["ontime"].clock_offset_ms) < SLACK_MS
    # and every host is alive: the server's clock judged their beats, whatever their own said
    assert {h.state for h in hosts.values()} == {"alive"}
    # and the API's model carries it
    assert HostOut(**hosts["ahead"].as_dict()).clock_offset_ms == hosts["ahead"].clock_offset_ms
    # When pinger check looks at the heartbeats
    h = Health()
    check_heartbeats(dbs, h)
    # Then it warns of the two hosts off, saying which way, and not of the one on time
    assert h.code == CHECK_WARNING
    assert sorted(h.checks["clock_offsets_s"]) == ["ahead", "behind"]
    assert abs(h.checks["clock_offsets_s"]["ahead"] - 3600) < 2
    assert any(p.startswith("host ahead: clock 36") and "s ahead of the database's" in p for p in h.problems)
    assert any(p.startswith("host behind: clock 36") and "s behind the database's" in p for p in h.problems)
    assert not any("ontime" in p for p in h.problems)
    # and the status page's hosts table notes the two, not the third
    page = hosts_fragment([x.as_dict() for x in hosts.values()], int(time.time() * 1000))
    rows = {name: page.split(f'data-host="{name}"')[1].split("</tr>")[0] for name in hosts}
    assert "ahead of the database" in rows["ahead"] and "behind the database" in rows["behind"]
    assert "clock" not in rows["ontime"]
    # and so do the lines of `enstratus-workers status` and the monitor
    lines = {x.name: host_line(x, int(time.time() * 1000)) for x in hosts.values()}
    assert "s ahead of the database's" in lines["ahead"]
    assert "behind the database's" in lines["behind"] and "clock" not in lines["ontime"]


@pytest.mark.mysql
def test_an_offset_under_two_seconds_is_shown_but_not_warned_of(mariadb_dbs):
    _beat_as(mariadb_dbs, "close", 1.0)
    (host,) = fleet_view(mariadb_dbs)
    assert 0 < host.clock_offset_ms < SLACK_MS
    h = Health()
    check_heartbeats(mariadb_dbs, h)
    assert (h.code, h.problems, "clock_offsets_s" in h.checks) == (CHECK_OK, [], False)


@pytest.mark.mysql
def test_a_dead_hosts_offset_is_not_judged(mariadb_dbs):
    # Given a host an hour ahead whose heartbeat has expired
    _beat_as(mariadb_dbs, "gone", 3600, ttl_s=-1)
    # Then it is reported dead, and its clock is not (nothing it stamps now)
    h = Health()
    check_heartbeats(mariadb_dbs, h)
    assert "clock_offsets_s" not in h.checks and all("clock" not in p for p in h.problems)
    (host,) = fleet_view(mariadb_dbs)
    assert host.state == "dead" and host.clock_offset_ms is None


def _row(details) -> Heartbeat:
    return Heartbeat("subscriber", "s", "h", 1, 0, 1_000_000, 2**62, "ok", details)


@pytest.mark.parametrize("said", [None, "1000000", 1_000_000.5, True, [1], {"a": 1}])
def test_a_beat_that_does_not_say_its_clock_plainly_has_no_offset(said):
    # rows by hand, or from a release before this one, or with junk in the key
    details = {} if said is None else {HOST_CLOCK_KEY: said}
    assert _row(details).clock_offset_ms is None
    assert clock_offsets([_row(details)]) == {}
    assert _row({HOST_CLOCK_KEY: 1_000_250}).clock_offset_ms == 250


def test_on_sqlite_one_host_is_its_own_databases_clock(tmp_path):
    dbs = open_databases(WorkerSettings(), Layout(tmp_path))
    try:
        dbs.heartbeats.beat("subscriber", "s1", ttl_s=30, details={"stats": {"received": 1}})
        (hb,) = dbs.heartbeats.all()
        # the daemon's own details are kept as they were, beside the clock
        assert hb.details["stats"] == {"received": 1} and HOST_CLOCK_KEY in hb.details
        assert hb.clock_offset_ms == 0
        assert json.loads(json.dumps(hb.details))   # still plain JSON for the Stat API
        h = Health()
        check_heartbeats(dbs, h)
        assert "clock_offsets_s" not in h.checks
    finally:
        dbs.close()
