"""Fleet-wide views: any host's admin API, status page, ``status`` and ``monitor`` show every
host (its daemons, worker processes, state, last heartbeat), a dead host as dead for a day and
then no more; an instance created without a placement goes to the least loaded live host, and
the instances list says where each runs."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from enstratus_workers import cli
from enstratus_workers.clock import now_ms
from enstratus_workers.db.heartbeats import HeartbeatStore
from enstratus_workers.db.hosts import HostRegistry
from enstratus_workers.db.schema import heartbeats as H
from enstratus_workers.fleet.hosts import FORGET_AFTER_S, fleet_view, forget_expired, least_loaded
from enstratus_workers.monitor.tui import Fetcher, render
from tests.unit.admin_helpers import Admin, home  # noqa: F401 - the fixture

DAY_MS = int(FORGET_AFTER_S * 1000)


def workers(host, *states, wtype="default"):
    return [{"name": f"{wtype}.{n}", "display": f"{wtype}@{host}.{n}", "type": wtype, "pid": 4000 + n,
             "state": s} for n, s in enumerate(states, 1)]


def beat_host(dbs, host, *, alive=True, processes=(), ago_s=0.0, daemons=("subscriber", "publisher", "pinger")):
    """Heartbeat rows of ``host``'s daemons, as they would have written them ``ago_s`` ago;
    expired unless ``alive``."""
    store = HeartbeatStore(dbs.provisioning, host)
    for daemon in daemons:
        details = {"workers": list(processes), "owner": f"{host}@{host}:1:aa"} if daemon == "subscriber" else {}
        store.beat(daemon, host, ttl_s=30 if alive else 10, details=details)
    if ago_s:
        shift = int(ago_s * 1000)
        with dbs.provisioning.begin() as conn:
            conn.execute(H.update().where(H.c.host == host).values(beat_ms=H.c.beat_ms - shift,
                                                                   expires_ms=H.c.expires_ms - shift))


@pytest.fixture
def fleet(home):  # noqa: F811
    """Four hosts on one database, seen from this machine's admin app: host1 alive with two
    worker processes, host2 dead a minute ago (killed), host3 stopped cleanly (registry only),
    host4 dead for more than a day."""
    api = Admin(home)
    dbs = api.ctx.dbs
    registry = HostRegistry(dbs.provisioning)
    for name in ("host1", "host2", "host3", "host4"):   # first started two minutes ago
        registry.join(name, ("gpu",) if name == "host2" else (), now=now_ms() - 120_000)
    beat_host(dbs, "host1", processes=workers("host1", "idle", "working"), daemons=(
        "subscriber", "publisher", "pinger", "admin"))
    beat_host(dbs, "host2", alive=False, processes=workers("host2", "working"), ago_s=60)
    registry.touch("host3", now=now_ms() - 3_600_000)
    beat_host(dbs, "host4", alive=False, ago_s=FORGET_AFTER_S + 60)
    registry.touch("host4", now=now_ms() - DAY_MS - 60_000)
    yield api
    api.close()


def test_every_host_shows_with_its_daemons_workers_state_and_last_heartbeat(fleet):
    hosts = {h.name: h for h in fleet_view(fleet.ctx.dbs)}
    # host1 alive: its four daemons alive, its two worker processes
    h1 = hosts["host1"]
    assert h1.state == "alive" and h1.worker_processes == 2
    assert [(d["daemon"], d["state"]) for d in h1.daemons] == [
        ("subscriber", "alive"), ("publisher", "alive"), ("pinger", "alive"), ("admin", "alive")]
    assert [w["display"] for w in h1.workers] == ["default@host1.1", "default@host1.2"]
    # host2 dead: every daemon dead, no worker process counted, its last heartbeat a minute back
    h2 = hosts["host2"]
    assert h2.state == "dead" and {d["state"] for d in h2.daemons} == {"dead"} and h2.workers == ()
    assert 55_000 <= now_ms() - h2.last_heartbeat_ms <= 120_000 and h2.tags == ("gpu",)
    # host3 stopped (no rows: a clean stop), seen an hour ago; host4, dead for a day, left out
    # (the admin app's own host joined too: it has no daemon beating, so it shows as stopped)
    assert hosts["host3"].state == "stopped" and hosts["host3"].daemons == ()
    assert sorted(hosts) == sorted(["host1", "host2", "host3", fleet.settings.worker.host_name])
    # And the pinger's round deletes the rows of hosts dead for longer than a day, no others
    assert forget_expired(fleet.ctx.dbs.provisioning) == 3
    assert {hb.host for hb in fleet.ctx.dbs.heartbeats.all()} == {"host1", "host2"}


def test_get_hosts_shows_the_fleet_and_forgets_a_host_only_when_it_is_not_alive(fleet):
    listed = fleet.call("GET", "/hosts").json()
    names = [h["name"] for h in listed]
    assert {"host1", "host2", "host3"} <= set(names) and "host4" not in names
    h2 = fleet.call("GET", "/hosts/host2").json()
    assert h2["state"] == "dead" and [d["daemon"] for d in h2["daemons"]] == ["subscriber", "publisher", "pinger"]
    assert fleet.call("GET", "/hosts/nowhere").status_code == 404
    assert fleet.call("GET", "/hosts/a..b").status_code == 422
    # A live host cannot be forgotten; a dead one can, and then a placement may not name it
    r = fleet.call("DELETE", "/hosts/host1")
    assert r.status_code == 409 and "alive" in r.json()["detail"]
    assert fleet.call("DELETE", "/hosts/host2").json()["name"] == "host2"
    assert fleet.call("GET", "/hosts/host2").status_code == 404
    r = fleet.call("POST", "/instances", json={"type": "t", "queues": ["q"], "placement": ["host:host2"]})
    assert r.status_code == 422 and "host:host2" in r.text


def test_an_instance_without_a_placement_goes_to_the_least_loaded_live_host(fleet):
    # Given a second live host running one worker process (host1 runs two; host2 is dead)
    beat_host(fleet.ctx.dbs, "host5", processes=workers("host5", "idle"))
    # When an instance is created without saying where
    r = fleet.call("POST", "/instances", json={"type": "tasker", "queues": ["tasks"]})
    # Then it is placed on host5, the live host with the fewest worker processes
    assert r.status_code == 201 and r.json()["placement"] == ["host:host5"], r.text
    # And once host5's subscriber runs it, the list says where each instance runs, every host's
    beat_host(fleet.ctx.dbs, "host5", processes=workers("host5", "idle") + workers("host5", "working", wtype="tasker"))
    listed = {i["type"]: i for i in fleet.call("GET", "/instances").json()}
    assert listed["tasker"]["running"] == [{"host": "host5", "processes": [
        {"name": "tasker.1", "display": "tasker@host5.1", "pid": 4001, "state": "working"}]}]
    assert [r["host"] for r in listed["default"]["running"]] == ["host1", "host5"]


def test_least_loaded_falls_back_to_the_asking_host_and_breaks_ties_by_name(fleet):
    view = fleet_view(fleet.ctx.dbs)
    assert least_loaded([h for h in view if h.name != "host1"], "me") == "me"   # no live subscriber
    beat_host(fleet.ctx.dbs, "host0", processes=workers("host0", "idle", "idle"))
    assert least_loaded(fleet_view(fleet.ctx.dbs), "me") == "host0"   # two each: the first by name


def test_status_monitor_and_the_status_page_show_every_host(fleet, capsys):
    # status --json carries the same hosts as GET /hosts, and its text says host2 is dead
    assert cli.main(["--home", str(fleet.home), "status", "--json"]) in (0, 1)
    data = json.loads(capsys.readouterr().out)
    assert [h["name"] for h in data["hosts"]] == [h["name"] for h in fleet.call("GET", "/hosts").json()]
    cli.main(["--home", str(fleet.home), "status"])
    text = capsys.readouterr().out
    assert "host2 [gpu]  DEAD  last heartbeat 6" in text and "host1  ALIVE" in text
    # monitor --json is one look at the same figures; the screen draws a line per host
    assert cli.main(["--home", str(fleet.home), "monitor", "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert {h["name"]: h["state"] for h in snap["hosts"] if h["name"].startswith("host")} == {
        "host1": "alive", "host2": "dead", "host3": "stopped"}
    screen = render(Fetcher(fleet.settings, fleet.layout, 1.0, dbs=fleet.ctx.dbs).fetch(), 160, 40)
    assert any(text.startswith("host2 [gpu]  DEAD") and style == "dead" for text, style in screen)
    # and the status page's Hosts table marks host2 dead
    page = fleet.call("GET", "/ui/status").text
    assert 'data-host="host2" class="host-dead"' in page and 'data-host="host1" class="host-alive"' in page


def test_the_views_read_a_database_no_daemon_of_this_release_prepared(fleet):
    # Given the host registry missing (an older release's database): heartbeats alone still show
    with fleet.ctx.dbs.provisioning.begin() as conn:
        conn.execute(sa.text("DROP TABLE enstratus_host"))
    assert {h.name: h.state for h in fleet_view(fleet.ctx.dbs)} == {"host1": "alive", "host2": "dead"}
