"""Server actions end to end: the local cloud's agent processes, a real SQLite persistence store,
and a minimal stand-in for the KM client (another engineer's component; only ``get`` is used)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import pytest

from enstratus_workers.actions.registry import ActionContext, Registry
from enstratus_workers.cloud import local_driver, process
from enstratus_workers.cloud.actions import (launch_server, reboot_server, register_cloud_actions,
                                             sync_account, terminate_server)
from enstratus_workers.cloud.guest_logs import LOG_BUCKET, chunk_key, collect_logs
from enstratus_workers.cloud.local_driver import LocalNodeDriver
from enstratus_workers.config.settings import (KMClientSettings, MQSettings, PersistenceSettings,
                                               ProvisioningSettings, Secret, Settings, WorkerSettings)
from enstratus_workers.errors import ActionError
from enstratus_workers.guest import client
from enstratus_workers.km import KMNotFound
from enstratus_workers.layout import Layout
from enstratus_workers.persist import open_store
from tests.servicehome import wait_until

HOST = "127.0.0.1"
SECRET = "top-secret-value-42"
CIDRS = ("10.20.0.0/16", "192.0.2.0/24")


@dataclass(frozen=True)
class FakeCredential:
    secret: Secret
    metadata: dict = field(default_factory=dict)


class FakeKM:
    """Answers ``get(account, name)`` from a dict, as the KM client does; KMNotFound otherwise."""

    def __init__(self, credentials: dict):
        self.credentials = credentials

    def get(self, account, name):
        try:
            return self.credentials[(str(account), name)]
        except KeyError:
            raise KMNotFound(f"no credential {name!r} for account {account}") from None


@pytest.fixture
def home(tmp_path):
    yield tmp_path
    state = tmp_path / "services" / "worker" / "data" / "local-cloud" / "cloud.json"
    if state.exists():
        for record in json.loads(state.read_text())["nodes"].values():
            if record.get("pid"):
                process.terminate(record["pid"], record.get("pid_start"), grace=2.0)


@pytest.fixture
def store(home):
    with open_store(PersistenceSettings(sqlite_path=home / "persistence.db"), Layout(home)) as s:
        yield s


@pytest.fixture
def km():
    return FakeKM({
        ("42", "cloud"): FakeCredential(Secret(SECRET.encode()), {"provider": "local", "key": "acct-42"}),
        ("7", "cloud"): FakeCredential(Secret(b"x"), {"provider": "no-such-cloud", "key": "k"}),
        ("8", "cloud"): FakeCredential(Secret(b"wrong"), {"provider": "local", "key": "acct-42"}),
    })


@pytest.fixture
def make_context(home, store, km):
    settings = Settings(home=home, mq=MQSettings(), worker=WorkerSettings(),
                        persistence=PersistenceSettings(sqlite_path=home / "persistence.db"),
                        km_client=KMClientSettings(),
                        provisioning=ProvisioningSettings(
                            source_cidrs=tuple(ipaddress.ip_network(c) for c in CIDRS)))

    def make(job_id=1, attempt=1):
        return ActionContext(job_id=job_id, attempt=attempt, queue="launcher", worker="w-test",
                             logger=logging.getLogger("action.test"), settings=settings, km=km,
                             persistence=store)
    return make


@pytest.fixture
def cloud(home):
    """The same local cloud the actions use, seen directly through the driver."""
    def open_():
        return LocalNodeDriver("acct-42", SECRET,
                               ex_state_dir=Layout(home).data_dir / "local-cloud")
    return open_


LAUNCH = {"account": 42, "image": "local-agent", "size": "small", "name": "web"}


def test_launch_persists_a_running_server_with_its_agent_port_open_to_the_source_cidrs(
        make_context, store, cloud):
    result = launch_server(dict(LAUNCH), make_context(job_id=11))

    assert result["state"] == "running" and result["public_ip"] == HOST
    assert result["account"] == "42" and result["provider"] == "local"
    obj = store.get("server", result["server_id"])
    assert obj.data["provider_node_id"] == result["provider_node_id"]
    assert obj.data["launched_by_job"] == 11 and obj.data["image"] == "local-agent"
    assert obj.data["updated_ms"] > 0
    assert dict(obj.indexes) == {"account_bin": "42", "state_bin": "running"}
    assert store.query("server", "state_bin", "running") == [result["server_id"]]
    port = result["agent_port"]
    assert client.ping(HOST, port).server_id == result["provider_node_id"]
    [node] = cloud().list_nodes()
    assert node.extra["ingress"] == [{"protocol": "tcp", "port": port, "cidrs": sorted(CIDRS)}]
    assert result["firewall"] == [{"protocol": "tcp", "port": port, "cidrs": list(CIDRS)}]


def test_a_redelivered_launch_returns_the_same_server_and_starts_no_second_agent(
        make_context, store, cloud):
    first = launch_server(dict(LAUNCH), make_context(job_id=12, attempt=1))

    again = launch_server(dict(LAUNCH), make_context(job_id=12, attempt=2))

    assert again["server_id"] == first["server_id"]
    assert again["provider_node_id"] == first["provider_node_id"]
    assert len(cloud().list_nodes()) == 1
    assert store.list_keys("server") == [first["server_id"]]


def test_a_launch_that_died_after_creating_the_node_finds_it_on_retry(make_context, store, cloud):
    # Given attempt 1 created the node but died before recording it
    first = launch_server(dict(LAUNCH), make_context(job_id=13))
    obj = store.get("server", first["server_id"])
    store.put("server", first["server_id"],
              dict(obj.data, state="launching", provider_node_id=None, public_ip=None),
              {"account_bin": "42", "state_bin": "launching"})

    # When the job is redelivered
    retried = launch_server(dict(LAUNCH), make_context(job_id=13, attempt=2))

    # Then the node of attempt 1 is found by its tag and name, and none is added
    assert retried["provider_node_id"] == first["provider_node_id"]
    assert retried["state"] == "running"
    assert len(cloud().list_nodes()) == 1


def test_another_job_launches_another_server(make_context, cloud):
    a = launch_server(dict(LAUNCH), make_context(job_id=14))
    b = launch_server(dict(LAUNCH), make_context(job_id=15))

    assert a["server_id"] != b["server_id"] and a["agent_port"] != b["agent_port"]
    assert len(cloud().list_nodes()) == 2


def test_sync_reconciles_killed_vanished_and_unknown_nodes(make_context, store, cloud):
    killed = launch_server(dict(LAUNCH), make_context(job_id=21))
    vanished = launch_server(dict(LAUNCH), make_context(job_id=22))
    driver = cloud()
    foreign = driver.create_node("made-in-console", driver.list_sizes()[1], driver.list_images()[0])

    # When one agent is killed, one node destroyed behind the platform's back, and the account synced
    nodes = {n.id: n for n in driver.list_nodes()}
    pid = nodes[killed["provider_node_id"]].extra["pid"]
    os.kill(pid, signal.SIGKILL)
    driver.destroy_node(nodes[vanished["provider_node_id"]])
    assert wait_until(lambda: not process.is_alive(pid, None))
    counts = sync_account({"account": "42"}, make_context(job_id=23))

    # Then each server object says what happened, and a new one stands for the unknown node
    assert counts == {"account": "42", "provider": "local", "nodes": 3,
                      "created": 1, "updated": 1, "terminated": 1, "unchanged": 0}
    assert store.get("server", killed["server_id"]).data["state"] == "stopped"
    assert store.get("server", vanished["server_id"]).data["state"] == "terminated"
    found = [k for k in store.query("server", "account_bin", "42")
             if store.get("server", k).data.get("provider_node_id") == foreign.id]
    assert len(found) == 1
    assert store.get("server", found[0]).data["discovered_by_job"] == 23
    assert store.query("server", "state_bin", "terminated") == [vanished["server_id"]]

    # And a second sync changes nothing
    again = sync_account({"account": "42"}, make_context(job_id=24))
    assert (again["created"], again["updated"], again["terminated"], again["unchanged"]) == (0, 0, 0, 3)


def test_sync_marks_a_server_whose_node_is_gone_for_good_terminated(make_context, store, cloud,
                                                                    monkeypatch):
    # Given the cloud destroyed the node and no longer lists it at all
    server = launch_server(dict(LAUNCH), make_context(job_id=25))
    cloud().destroy_node(cloud().list_nodes()[0])
    monkeypatch.setattr(local_driver, "TOMBSTONE_TTL_MS", -1)

    counts = sync_account({"account": 42}, make_context(job_id=26))

    assert counts["nodes"] == 0 and counts["terminated"] == 1
    assert store.get("server", server["server_id"]).data["state"] == "terminated"


def test_collect_logs_stores_new_lines_and_advances_the_offset(make_context, store):
    server = launch_server(dict(LAUNCH, image="local-agent-chatty"), make_context(job_id=31))
    sid = server["server_id"]

    first = collect_logs({"server_id": sid}, make_context(job_id=32))

    assert first["chunks"] == 1 and first["lines"] >= 3
    chunk = store.get(LOG_BUCKET, chunk_key(sid, 0)).data
    assert any("boot: ready" in line for line in chunk["lines"])
    assert chunk["start"] == 0 and chunk["end"] == first["log_offset"]
    assert store.get("server", sid).data["log_offset"] == first["log_offset"]
    assert store.query(LOG_BUCKET, "server_bin", sid) == [chunk_key(sid, 0)]

    # After the agent logged more (an alive line a second), only the new lines are fetched
    time.sleep(1.3)
    second = collect_logs({"server_id": sid}, make_context(job_id=33))

    assert second["chunks"] == 1 and second["log_offset"] > first["log_offset"]
    later = store.get(LOG_BUCKET, chunk_key(sid, 1)).data
    assert later["start"] == first["log_offset"]
    assert later["lines"] and all("alive uptime=" in line for line in later["lines"])
    record = store.get("server", sid).data
    assert (record["log_offset"], record["log_chunks"]) == (second["log_offset"], 2)


def test_reboot_keeps_the_port_and_restarts_the_agent(make_context, store):
    server = launch_server(dict(LAUNCH), make_context(job_id=41))
    time.sleep(0.3)
    before = client.ping(HOST, server["agent_port"]).uptime_s

    result = reboot_server({"server_id": server["server_id"]}, make_context(job_id=42))

    assert result["state"] == "running" and result["agent_port"] == server["agent_port"]
    assert client.ping(HOST, server["agent_port"]).uptime_s < before


def test_terminate_kills_the_agent_and_is_idempotent(make_context, store, cloud):
    server = launch_server(dict(LAUNCH), make_context(job_id=51))
    pid = cloud().list_nodes()[0].extra["pid"]

    result = terminate_server({"server_id": server["server_id"]}, make_context(job_id=52))

    assert result["state"] == "terminated" and result["public_ip"] is None
    assert not process.is_alive(pid, None)
    assert cloud().list_nodes()[0].state == "terminated"
    assert terminate_server({"server_id": server["server_id"]}, make_context(job_id=52, attempt=2))[
        "state"] == "terminated"
    # and a redelivery of the original launch does not bring it back
    relaunched = launch_server(dict(LAUNCH), make_context(job_id=51, attempt=2))
    assert relaunched["state"] == "terminated"
    assert [n.state for n in cloud().list_nodes()] == ["terminated"]
    with pytest.raises(ActionError, match="terminated"):
        reboot_server({"server_id": server["server_id"]}, make_context(job_id=53))
    with pytest.raises(ActionError, match="terminated"):
        collect_logs({"server_id": server["server_id"]}, make_context(job_id=54))


@pytest.mark.parametrize("arguments, reason", [
    ({"image": "local-agent", "size": "small", "name": "web"}, "'account'"),
    (dict(LAUNCH, account=True), "'account'"),
    (dict(LAUNCH, name="bad name!"), "'name'"),
    (dict(LAUNCH, size=None), "'size'"),
    (dict(LAUNCH, image="windows-2003"), "unknown image 'windows-2003'"),
    (dict(LAUNCH, size="huge"), "unknown size 'huge'"),
    (dict(LAUNCH, account=7), "unknown cloud provider 'no-such-cloud'"),
    (dict(LAUNCH, account=99), "account 99 has no cloud credentials"),
])
def test_bad_launch_inputs_fail_with_a_clear_action_error(make_context, cloud, arguments, reason):
    cloud()  # the local cloud exists, owned by account 42's credentials
    with pytest.raises(ActionError, match=reason):
        launch_server(arguments, make_context(job_id=61))
    assert cloud().list_nodes() == []


def test_wrong_credentials_are_refused_without_revealing_them(make_context, cloud, caplog):
    cloud()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ActionError, match="refused the credentials of account 8") as failure:
        launch_server(dict(LAUNCH, account=8), make_context(job_id=62))
    assert "wrong" not in str(failure.value)


def test_credentials_never_reach_results_or_logs(make_context, store, caplog):
    caplog.set_level(logging.DEBUG)
    server = launch_server(dict(LAUNCH), make_context(job_id=63))
    results = [server, sync_account({"account": 42}, make_context(job_id=64)),
               collect_logs({"server_id": server["server_id"]}, make_context(job_id=65))]

    text = json.dumps(results) + caplog.text + json.dumps(store.get("server", server["server_id"]).data)
    assert SECRET not in text and "acct-42" not in text


def test_unknown_server_and_missing_services_fail_with_action_error(make_context):
    context = make_context(job_id=71)
    with pytest.raises(ActionError, match="no server 'srv-000000000000'"):
        terminate_server({"server_id": "srv-000000000000"}, context)
    with pytest.raises(ActionError, match="'server_id'"):
        collect_logs({}, context)
    context.km = None
    with pytest.raises(ActionError, match="no KM client"):
        sync_account({"account": 42}, context)


def test_register_cloud_actions_adds_every_action():
    registry = Registry()
    register_cloud_actions(registry)

    assert registry.names() == ["guest.collect_logs", "server.launch", "server.reboot",
                                "server.sync", "server.terminate"]
    assert registry.get("server.launch") is launch_server



def test_every_server_state_change_is_an_analytics_event(tmp_path):
    """The worker wraps the persistence layer so that server state changes become events."""
    from enstratus_workers.cloud.servers import update_server
    from enstratus_workers.cloud.state_events import StateEventHook, StateEventStore
    from enstratus_workers.jobs.values import Task
    from enstratus_workers.config.settings import PersistenceSettings, WorkerSettings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout
    from enstratus_workers.persist import open_store

    layout = Layout(tmp_path)
    dbs = open_databases(WorkerSettings(), layout)
    store = StateEventStore(open_store(PersistenceSettings(sqlite_path=tmp_path / "p.db"), layout), lambda: dbs.events)
    hook = StateEventHook(store)
    try:
        hook.before_action(Task(7, "server.launch", {}, 1, 3, "default"), None)
        update_server(store, "srv-1", lambda cur: {"account": "a", "state": "launching"})
        update_server(store, "srv-1", lambda cur: {**cur, "state": "running"})
        update_server(store, "srv-1", lambda cur: {**cur, "last_seen_ms": 5})     # no state change
        hook.after_action(Task(7, "server.launch", {}, 1, 3, "default"), None, None)
        assert store._seen == {}   # forgotten: stale for the next action, and never piling up
        hook.before_action(Task(8, "server.terminate", {}, 1, 3, "default"), None)
        update_server(store, "srv-1", lambda cur: {**cur, "state": "terminated"})
        events = dbs.events.server_events("srv-1")
        assert [(e.old_state, e.new_state, e.job_id) for e in events] == [
            (None, "launching", 7), ("launching", "running", 7), ("running", "terminated", 8)]
        assert events[-1].action == "server.terminate" and events[0].account == "a"
    finally:
        store.close()
        dbs.close()
