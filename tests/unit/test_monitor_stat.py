"""The Stat API: clusters read back from heartbeat rows the real HeartbeatStore wrote."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import pytest

from enstratus_workers.config.settings import (KMClientSettings, MQSettings, PersistenceSettings,
                                               ProvisioningSettings, Settings, WorkerSettings)
from enstratus_workers.db import now_ms, open_databases
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.monitor import Stat
from enstratus_workers.monitor.stat import TransportDepths
from enstratus_workers.monitor.tui import Fetcher, Snapshot, human_duration, render
from enstratus_workers.mq import QueueDepth


def make_settings(home, **worker) -> Settings:
    return Settings(home=home, mq=MQSettings(), worker=WorkerSettings(**worker),
                    persistence=PersistenceSettings(), km_client=KMClientSettings(),
                    provisioning=ProvisioningSettings())


def worker(name, pid, state, *, inflight=0, done=0, rc=0, up=12.5, wtype="default"):
    return {"name": name, "display": f"{wtype}@h.{name[-1]}", "type": wtype, "pid": pid, "state": state,
            "inflight": inflight, "tasks_done": done, "reincarnations": rc, "uptime_s": up}


def details(workers, *, pending=None, inflight=0, recording=0, connected=True, received=0):
    return {"workers": workers,
            "stats": {"received": received, "succeeded": 0, "failed": 0, "dead_lettered": 0, "duplicates": 0},
            "pending": pending or {"default": 0}, "inflight": inflight, "recording": recording,
            "connected": connected, "reconnects": 0}


@pytest.fixture
def env(tmp_path):
    layout = Layout(tmp_path)
    settings = make_settings(tmp_path)
    dbs = open_databases(settings.worker, layout)
    yield settings, layout, dbs
    dbs.close()


class FakeDepths:
    """A depths source that answers from a dict and remembers what it was asked."""

    def __init__(self, ready: dict[str, int]):
        self.ready, self.asked = ready, []

    def __call__(self, queues):
        self.asked.append(tuple(queues))
        return [QueueDepth(q, self.ready.get(q, 0), 0, 1, 0) for q in queues]


def test_a_beating_subscriber_is_a_running_cluster_with_its_pool(env):
    settings, layout, dbs = env
    # Given a subscriber that started an hour ago and beats now, with two workers
    started = now_ms() - 3_600_000
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, started_ms=started, details=details(
        [worker("default.1", 101, "working", inflight=2, done=7, rc=1),
         worker("default.2", 102, "idle", done=3, rc=2)],
        pending={"default": 3}, inflight=2, recording=4, received=12))
    # When the clusters are read
    stats = Stat.get_all(settings, layout, dbs=dbs)
    # Then there is one, named after the subscriber and its host, with the pool's figures
    assert len(stats) == 1
    s = stats[0]
    host = short_hostname()
    assert (s.cluster_id, s.name, s.host, s.pid) == (f"subscriber@main@{host}", "main", host, os.getpid())
    assert s.status == "running"
    assert s.tob == datetime.fromtimestamp(started / 1000, timezone.utc)
    assert 3599 <= s.uptime() <= 3600 + 5
    assert s.workers == [101, 102]
    assert [w["state"] for w in s.worker_details] == ["working", "idle"]
    assert s.task_q_size == 3 + 2      # TQ: waiting for a worker + held by workers
    assert s.done_q_size == 4          # RQ: outcomes not yet recorded and acked
    assert s.reincarnations == 1 + 2   # RC: summed over the workers
    assert s.stats["received"] == 12
    assert s.workers_by_state() == {"starting": 0, "idle": 1, "working": 1, "stopping": 0, "stopped": 0}


def test_an_expired_heartbeat_is_a_dead_cluster_whose_uptime_stops_at_its_last_beat(env):
    settings, layout, dbs = env
    # Given a subscriber whose heartbeat expired (it stopped beating without removing its row)
    started = now_ms() - 60_000
    dbs.heartbeats.beat("subscriber", "gone", ttl_s=-5, started_ms=started,
                        details=details([worker("default.1", 201, "idle")]))
    # When it is read
    s = Stat.get_all(settings, layout, dbs=dbs)[0]
    # Then it is dead, and its uptime is how long it lived until that beat
    assert s.status == "dead"
    assert s.expired
    assert s.uptime() == pytest.approx((s.beat_ms - started) / 1000)
    assert s.as_dict()["heartbeat"]["expired"] is True


@pytest.mark.parametrize("why, beat", [
    ("queue disconnected", dict(details=details([worker("default.1", 1, "idle")], connected=False))),
    ("heartbeat says degraded", dict(status="degraded", details=details([worker("default.1", 1, "idle")]))),
    ("a worker process is down", dict(details=details([worker("default.1", 1, "idle"),
                                                       worker("default.2", None, "stopped")]))),
    ("no worker at all", dict(details=details([]))),
])
def test_trouble_reported_in_the_heartbeat_makes_the_cluster_degraded(env, why, beat):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, **beat)
    assert Stat.get_all(settings, layout, dbs=dbs)[0].status == "degraded", why


def test_a_cluster_whose_workers_are_all_stopping_is_stopped(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details(
        [worker("default.1", 1, "stopping"), worker("default.2", 2, "stopping")]))
    s = Stat.get_all(settings, layout, dbs=dbs)[0]
    assert s.status == "stopped"
    assert s.workers == [1, 2]


def test_a_worker_between_two_lives_has_no_pid_in_workers_but_stays_in_details(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details(
        [worker("default.1", 1, "idle", rc=4), worker("default.2", None, "stopped", rc=3)]))
    s = Stat.get_all(settings, layout, dbs=dbs)[0]
    assert s.workers == [1]
    assert len(s.worker_details) == 2
    assert s.reincarnations == 7


def test_only_subscribers_are_clusters_and_get_finds_one_by_id_or_name(env):
    settings, layout, dbs = env
    # Given two subscribers and a publisher beating
    dbs.heartbeats.beat("publisher", "main", ttl_s=10, details={"published": 5})
    dbs.heartbeats.beat("subscriber", "b", ttl_s=10, details=details([worker("default.1", 1, "idle")]))
    dbs.heartbeats.beat("subscriber", "a", ttl_s=10, details=details([worker("default.1", 2, "idle")]))
    # When they are listed, then only the subscribers appear, sorted
    host = short_hostname()
    assert [s.cluster_id for s in Stat.get_all(settings, layout, dbs=dbs)] == [
        f"subscriber@a@{host}", f"subscriber@b@{host}"]
    # And get finds one by its id or its bare name, and nothing for an unknown one
    assert Stat.get(f"subscriber@b@{host}", settings, layout, dbs=dbs).workers == [1]
    assert Stat.get("a", settings, layout, dbs=dbs).workers == [2]
    assert Stat.get("subscriber@nope@nowhere", settings, layout, dbs=dbs) is None
    assert Stat.get("main", settings, layout, dbs=dbs) is None  # the publisher is no cluster


def test_get_all_opens_the_databases_itself_from_settings_and_layout(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details([worker("default.1", 9, "idle")]))
    # When read without an open Databases (as another process would)
    stats = Stat.get_all(settings, layout)
    assert [s.workers for s in stats] == [[9]]


def test_empty_queues_are_the_configured_queues_with_nothing_ready(tmp_path):
    # Given three queues configured for two worker types, and a depths source
    from enstratus_workers.config.settings import WorkerType

    layout = Layout(tmp_path)
    settings = make_settings(tmp_path, types=(WorkerType("default", ("default", "sync")),
                                              WorkerType("launcher", ("launch",))))
    dbs = open_databases(settings.worker, layout)
    try:
        dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details([worker("default.1", 1, "idle")]))
        depths = FakeDepths({"default": 0, "sync": 4, "launch": 0})
        s = Stat.get_all(settings, layout, dbs=dbs, depths=depths)[0]
        # When asked for its empty queues, then the transport is asked about every configured queue
        assert s.empty_queues() == ["default", "launch"]
        assert depths.asked == [("default", "sync", "launch")]
    finally:
        dbs.close()


def test_empty_queues_reads_the_real_embedded_transport_by_default(env):
    settings, layout, dbs = env
    from enstratus_workers.mq import OutgoingMessage, open_transport

    # Given the embedded queue with one message in "default"
    with open_transport(settings.mq, layout) as t:
        t.declare(["default"])
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details([worker("default.1", 1, "idle")]))
    s = Stat.get_all(settings, layout, dbs=dbs)[0]
    assert s.empty_queues() == ["default"]
    with open_transport(settings.mq, layout) as t:
        t.publish([OutgoingMessage("default", b"{}", "1")])
    # Then the queue is no longer empty, read through a kept-open transport as well
    assert s.empty_queues() == []
    depths = TransportDepths(settings, layout)
    try:
        assert [(d.queue, d.ready) for d in depths(["default"])] == [("default", 1)]
    finally:
        depths.close()


def test_as_dict_is_json_with_the_same_figures(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details(
        [worker("default.1", 5, "working", inflight=1, rc=2)], pending={"default": 1}, inflight=1, recording=2))
    s = Stat.get_all(settings, layout, dbs=dbs, depths=FakeDepths({}))[0]
    d = json.loads(json.dumps(s.as_dict(with_queues=True)))
    assert d["cluster_id"] == s.cluster_id
    assert (d["status"], d["task_q_size"], d["done_q_size"], d["reincarnations"]) == ("running", 2, 2, 2)
    assert d["workers"] == [5]
    assert d["worker_details"][0]["state"] == "working"
    assert d["empty_queues"] == ["default"]
    assert datetime.fromisoformat(d["tob"]) == s.tob
    assert "empty_queues" not in s.as_dict()  # without with_queues the transport is not asked


# -- the monitor's rendering of these figures ---------------------------------------------------
def test_human_duration_shows_the_two_largest_units():
    assert [human_duration(s) for s in (0, 45, 723, 11040, 183600)] == ["0s", "45s", "12m03s", "3h04m", "2d03h"]


def test_the_monitor_screen_shows_a_cluster_line_and_a_row_per_worker(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details(
        [worker("default.1", 4321, "working", inflight=3, done=9, rc=1, up=3700)],
        pending={"default": 2}, inflight=3, recording=1))
    snap = Snapshot(taken=time.time(), clusters=Stat.get_all(settings, layout, dbs=dbs),
                    job_counts=dbs.jobs.counts(), depths=FakeDepths({"default": 6})(["default"]))
    # When rendered on a 120x20 screen
    lines = render(snap, 120, 20)
    texts = [t for t, _ in lines]
    # Then: title, column header, the cluster with its totals, the worker row, and the footer last
    assert len(lines) == 20 and all(len(t) < 120 for t in texts)
    assert texts[1].split() == ["Host", "Id", "Pid", "State", "Pool", "TQ", "RQ", "RC", "Done", "Up"]
    cluster = next(t for t, style in lines if style == "running")
    assert "subscriber@main@" in cluster and "TQ 5" in cluster and "RQ 1" in cluster and "RC 1" in cluster
    row = next(t for t in texts if "default.1" in t).split()
    assert row[1:] == ["default.1", "4321", "Working", "default", "3", "-", "1", "9", "1h01m"]
    assert texts[-3].startswith("jobs  pending 0")
    assert texts[-2] == "queues  default: ready 6 unacked 0 dead 0"
    assert "q quit" in texts[-1]


def test_the_monitor_screen_keeps_its_footer_when_rows_do_not_fit(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("subscriber", "main", ttl_s=10, details=details(
        [worker(f"default.{i}", 100 + i, "idle") for i in range(1, 30)]))
    snap = Snapshot(taken=time.time(), clusters=Stat.get_all(settings, layout, dbs=dbs),
                    job_counts=None, depths=None, errors=["provisioning DB: OperationalError: boom"])
    lines = render(snap, 80, 12)
    texts = [t for t, _ in lines]
    assert len(lines) == 12
    assert any(t.startswith("... ") and "more lines" in t for t in texts)
    assert ("error: provisioning DB: OperationalError: boom", "error") in lines
    assert "q quit" in texts[-1]


def test_the_monitor_fetch_reports_an_unreachable_database_instead_of_failing(tmp_path):
    # Given a provisioning URL naming a directory, which SQLite cannot open
    (tmp_path / "not-a-file.db").mkdir()
    layout = Layout(tmp_path)
    settings = make_settings(tmp_path, provisioning_url=_secret(f"sqlite:///{tmp_path}/not-a-file.db"))
    fetcher = Fetcher(settings, layout, 1.0, depths=FakeDepths({"default": 0}))
    try:
        # When the figures are fetched
        snap = fetcher.fetch()
    finally:
        fetcher.stop()
    # Then the error is in the snapshot, and what could be read still is
    assert snap.job_counts is None and snap.clusters == []
    assert len(snap.errors) == 1 and snap.errors[0].startswith("provisioning DB: OperationalError")
    assert [d.queue for d in snap.depths] == ["default"]


def _secret(value):
    from enstratus_workers.config.settings import Secret

    return Secret(value)
