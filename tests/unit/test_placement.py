"""Placement: a worker type runs on every host, or on the hosts its placement names (host:NAME,
tag:TAG); a subscriber runs only the types placed on its host. A placement naming no host the
fleet knows is refused: 422 naming it from the API, exit 6 naming file, key and line from
worker.properties."""

from __future__ import annotations

import subprocess
import sys

import pytest

from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import WorkerSettings, WorkerType
from enstratus_workers.daemons.subscriber.daemon import Subscriber
from enstratus_workers.db import open_databases
from enstratus_workers.db.desired import read_desired
from enstratus_workers.db.hosts import HostRegistry
from enstratus_workers.db.instances import InstanceStore
from enstratus_workers.errors import ConfigError
from enstratus_workers.fleet import placement
from enstratus_workers.fleet.joining import join_fleet
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.unit.admin_helpers import Admin, home  # noqa: F401 - the fixture
from tests.unit.test_desired_state import engine  # noqa: F401 - the fixture, on SQLite and MariaDB

PROPS = "services/worker/classes/worker.properties"


def test_a_placement_matches_hosts_by_name_or_tag_and_none_is_every_host():
    assert placement.parse("*") == () and placement.parse("host:web-1, tag:winxp") == ("host:web-1", "tag:winxp")
    assert placement.runs_on((), "anything")
    assert placement.runs_on(("host:web-1", "tag:winxp"), "web-1")
    assert placement.runs_on(("host:web-1", "tag:winxp"), "scan-7", ("big", "winxp"))
    assert not placement.runs_on(("host:web-1", "tag:winxp"), "web-2", ("WinXP",))   # byte for byte
    known = {"web-1": (), "scan-7": ("winxp",)}
    assert placement.unknown(("host:web-1", "tag:winxp", "host:web-9", "tag:linux"), known) == [
        "host:web-9", "tag:linux"]


# -- the store, on SQLite and MariaDB (the engine fixture of test_desired_state) -------------------

def test_placements_and_hosts_are_stored_read_changed_and_removed(engine):
    # Given a database seeded from a file whose winxp type runs on tagged hosts only
    worker = WorkerSettings(types=(WorkerType("default", ("default",), 1, 1),
                                   WorkerType("winxp", ("scan",), 0, 2, ("tag:winxp", "host:lab-1"))))
    state = read_desired(engine, worker)
    assert [(t.name, t.placement) for t in state.types] == [
        ("default", ()), ("winxp", ("tag:winxp", "host:lab-1"))]
    store = InstanceStore(engine)
    winxp = store.by_type("winxp")
    assert winxp.as_dict()["placement"] == ["tag:winxp", "host:lab-1"]
    assert store.by_type("default").as_dict()["placement"] == ["*"]
    # When an instance is created on one host and another moved to every host
    made = store.create("launcher", ["launch"], 1, 1, where=("host:web-1",))
    assert made.placement == ("host:web-1",)
    assert store.place(winxp.id, ()).placement == ()
    # Then subscribers of each host see their share
    state = read_desired(engine)
    assert [t.name for t in state.types_on("web-1")] == ["default", "winxp", "launcher"]
    assert [t.name for t in state.types_on("web-2")] == ["default", "winxp"]
    # And a deleted instance takes its placement with it (a new one of the type starts clean)
    store.delete(made.id)
    assert store.create("launcher", ["launch"], 1, 1).placement == ()
    # The host registry keeps every host with its tags, renewed by each join
    hosts = HostRegistry(engine)
    hosts.join("web-1", (), now=1000)
    hosts.join("scan-7", ("winxp", "big"), now=2000)
    hosts.join("web-1", ("edge",), now=3000)
    assert hosts.known() == {"scan-7": ("winxp", "big"), "web-1": ("edge",)}
    web = next(h for h in hosts.all() if h.name == "web-1")
    assert (web.first_seen_ms, web.last_seen_ms) == (1000, 3000)
    assert hosts.forget("web-1") and not hosts.forget("web-1") and list(hosts.known()) == ["scan-7"]


# -- the admin API --------------------------------------------------------------------------------

def test_the_api_places_an_instance_only_on_hosts_the_fleet_knows(home):  # noqa: F811
    api = Admin(home)
    try:
        HostRegistry(api.ctx.dbs.provisioning).join("scan-7", ("winxp",))
        # When an instance is placed by tag and by host name, both known
        r = api.call("POST", "/instances", json={"type": "winxp", "queues": ["scan"],
                                                 "placement": ["tag:winxp", "host:scan-7"]})
        assert r.status_code == 201, r.text
        assert r.json()["placement"] == ["tag:winxp", "host:scan-7"]
        iid = r.json()["id"]
        # Then it can be moved to every host, and back to a known host
        assert api.call("PUT", f"/instances/{iid}/placement", json={"placement": ["*"]}).json()["placement"] == ["*"]
        assert api.call("PUT", f"/instances/{iid}/placement",
                        json={"placement": ["host:scan-7"]}).json()["placement"] == ["host:scan-7"]
        # But a host or tag no daemon ever had is refused with a 422 naming it; nothing changes
        for where, says in ((["host:nowhere"], "host:nowhere"), (["tag:winxp", "tag:linux"], "tag:linux")):
            r = api.call("PUT", f"/instances/{iid}/placement", json={"placement": where})
            assert r.status_code == 422 and says in r.text and "known hosts" in r.text, r.text
            assert r.json()["detail"][0]["loc"] == ["body", "placement"]
        r = api.call("POST", "/instances", json={"type": "other", "queues": ["o"], "placement": ["host:ghost"]})
        assert r.status_code == 422 and "host:ghost" in r.text
        assert api.call("GET", f"/instances/{iid}").json()["placement"] == ["host:scan-7"]
        assert "other" not in [i["type"] for i in api.call("GET", "/instances").json()]
        # And targets that are not targets are refused before anything is looked up
        for bad, says in ((["rack:1"], "not a placement target"), (["*", "host:scan-7"], "cannot be combined"),
                          (["host:a/b"], "does not name a host"), ([], "at least 1 item"),
                          (["tag:x"] * 2, "listed twice")):
            r = api.call("PUT", f"/instances/{iid}/placement", json={"placement": bad})
            assert r.status_code == 422 and says in r.text, (bad, r.text)
        assert api.call("PUT", "/instances/999/placement", json={"placement": ["*"]}).status_code == 404
    finally:
        api.close()


# -- worker.properties ------------------------------------------------------------------------------

def line_of(path, key) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(key + " "))


def test_a_file_placement_naming_no_known_host_stops_a_daemon_with_exit_6(tmp_path):
    # Given host1's file placing a type on host3, which never started, and by a tag nobody has
    home = sh.make_home(tmp_path, worker_props={
        "host.name": "host1", "host.tags": "edge", "worker.types": "default, winxp, web",
        "worker.winxp.placement": "host:host3", "worker.web.placement": "tag:edge, host:host1"})
    path = home / PROPS
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        # When host1 joins the fleet, the unknown one is named with its file, key and line;
        # its own name and tags are known from the start
        with pytest.raises(ConfigError) as caught:
            join_fleet(settings, dbs)
        err = caught.value
        assert (err.file, err.key, err.line) == (path, "worker.winxp.placement", line_of(path, "worker.winxp.placement"))
        assert "host:host3" in err.reason and "known hosts: host1" in err.reason
        # Once host3 has started once, the same file is fine
        HostRegistry(dbs.provisioning).join("host3")
        join_fleet(settings, dbs)
    finally:
        dbs.close()
    # And a daemon started on a database that never saw host3 exits 6 saying so
    other = sh.make_home(tmp_path / "b", worker_props={"worker.types": "default, winxp",
                                                        "worker.winxp.placement": "host:host3"})
    try:
        r = subprocess.run([sys.executable, "-m", "enstratus_workers.daemons.publisher", "start", "--home",
                            str(other)], capture_output=True, text=True, timeout=90)
        assert r.returncode == 6, r.stdout + r.stderr
        assert (f"{other / PROPS}:{line_of(other / PROPS, 'worker.winxp.placement')}, "
                "key 'worker.winxp.placement'") in r.stderr
        assert sh.wait_until(lambda: not sh.our_processes(other), timeout=30)   # the daemon gave up
    finally:
        sh.kill_strays(other)


def test_a_subscriber_runs_only_the_types_placed_on_its_host(tmp_path):
    # Given a fleet's types: one everywhere, one on host2, one on hosts tagged gpu
    home = sh.make_home(tmp_path, worker_props={
        "host.name": "host1", "host.tags": "gpu", "worker.types": "default, only2, gpu",
        "worker.only2.placement": "host:host2", "worker.gpu.placement": "tag:gpu"})
    layout = Layout(home)
    settings = load_settings(layout)
    sub = Subscriber(settings, layout, "host1")
    sub.dbs = open_databases(settings.worker, layout)
    try:
        HostRegistry(sub.dbs.provisioning).join("host2")
        # Then host1's subscriber runs the one everywhere and the gpu one, not host2's
        assert [t.name for t in sub._types_here()] == ["default", "gpu"]
        # And follows a change of placement made anywhere
        store = InstanceStore(sub.dbs.provisioning)
        store.place(store.by_type("only2").id, ("host:host1",))
        assert [t.name for t in sub._types_here()] == ["default", "only2", "gpu"]
    finally:
        sub.dbs.close()


def test_config_check_judges_placements_against_the_hosts_the_database_knows(tmp_path, capsys):
    from enstratus_workers import cli

    # Given a file placing a type on host3, in an install whose database never saw host3
    home = sh.make_home(tmp_path, worker_props={"worker.types": "default, winxp",
                                                "worker.winxp.placement": "host:host3"})
    path = home / PROPS
    # When config check runs on a database no daemon has prepared, host3 is unknown: exit 6
    assert cli.main(["--home", str(home), "config", "check"]) == 6
    assert f"{path}:{line_of(path, 'worker.winxp.placement')}, key 'worker.winxp.placement'" in capsys.readouterr().err
    assert not (home / "services/worker/data/provisioning.db").exists()   # nothing was created
    # Once host3 has run against the database, the same file passes
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        HostRegistry(dbs.provisioning).join("host3")
    finally:
        dbs.close()
    assert cli.main(["--home", str(home), "config", "check"]) == 0
