"""One source of desired state: a queue and a worker type made through the admin API exist for
every reader, not only for the API: the CLI's and Python's submit, the publisher's declares,
``pinger check``, the metrics, the monitor and ``Stat``, and ``status``."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from enstratus_workers import cli
from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import PublisherSettings, Settings, WorkerSettings, WorkerType
from enstratus_workers.daemons.pinger.health import check_health
from enstratus_workers.daemons.publisher import daemon as publisher_mod
from enstratus_workers.daemons.publisher.daemon import Publisher
from enstratus_workers.db import open_databases
from enstratus_workers.db.desired import DesiredStateCache, read_desired
from enstratus_workers.db.engine import make_engine
from enstratus_workers.db.instances import InstanceStore
from enstratus_workers.jobs.submit import SubmitError, submit
from enstratus_workers.layout import Layout
from enstratus_workers.metrics import make_registry
from enstratus_workers.monitor import Stat
from enstratus_workers.monitor.tui import Fetcher
from enstratus_workers.mq import open_transport
from enstratus_workers.mq.base import OutgoingMessage
from tests.unit.admin_helpers import Admin, home  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def made(home):  # noqa: F811 - the fixture above
    """The SCS walkthrough's first steps through the admin API: a queue 'tasks' and an instance
    consuming it, neither of them in worker.properties."""
    api = Admin(home)
    try:
        assert api.call("POST", "/queues", json={"name": "tasks"}).status_code == 201
        r = api.call("POST", "/instances", json={"type": "tasker", "queues": ["tasks"],
                                                 "concurrency": {"min": 1, "max": 2}})
        assert r.status_code == 201, r.text
    finally:
        api.close()
    return home


def test_the_cli_and_python_submit_take_a_queue_made_through_the_api(made, capsys):
    # When the CLI submits to it, as the new user did
    assert cli.main(["--home", str(made), "submit", "noop", "--queue", "tasks", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue"] == "tasks"
    # And Python's submit() too; a queue nobody made is still refused, naming what exists
    layout = Layout(made)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        job, created = submit(settings, dbs, "noop", queue="tasks")
        assert created and job.queue == "tasks"
        with pytest.raises(SubmitError, match=r"unknown queue 'nowhere'; the worker types consume: default, tasks"):
            submit(settings, dbs, "noop", queue="nowhere")
    finally:
        dbs.close()
    assert cli.main(["--home", str(made), "submit", "noop", "--queue", "nowhere"]) == 2


def test_a_queue_added_after_the_cache_was_filled_is_taken_at_once(made):
    # Given a process whose cached desired state is warm
    layout = Layout(made)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        submit(settings, dbs, "noop", queue="tasks")
        # When another process (another host's admin) makes an instance consume a new queue
        store = InstanceStore(make_engine(settings.worker.provisioning_url.reveal(), layout))
        store.consume(store.by_type("tasker").id, "fresh")
        store.engine.dispose()
        # Then this process takes a job for it right away: a miss reads again
        assert submit(settings, dbs, "noop", queue="fresh")[0].queue == "fresh"
    finally:
        dbs.close()


class RecordingTransport:
    def __init__(self):
        self.declared = []

    def declare(self, queues):
        self.declared.extend(queues)

    def publish(self, messages):
        pass

    def publish_one(self, message):
        pass

    def keep_alive(self):
        pass

    def depths(self, queues):
        return []

    def close(self):
        pass


def test_the_publisher_declares_every_queue_of_the_desired_state(made, monkeypatch):
    transport = RecordingTransport()
    monkeypatch.setattr(publisher_mod, "open_transport", lambda *a, **kw: transport)
    layout = Layout(made)
    settings = load_settings(layout)
    pub = Publisher(SimpleNamespace(mq=SimpleNamespace(transport="recording"), worker=settings.worker,
                                    publisher=PublisherSettings.of(settings.worker)), layout, "t")
    pub.dbs = open_databases(settings.worker, layout)
    try:
        # When it connects, it declares the API's queue with the file's
        assert pub._relay_once().relayed == 0
        assert transport.declared == ["default", "tasks"]
    finally:
        pub.dbs.close()


def test_pinger_check_metrics_monitor_stat_and_status_count_the_apis_queue(made, capsys):
    layout = Layout(made)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        assert submit(settings, dbs, "noop", queue="tasks")[0].queue == "tasks"
        with open_transport(settings.mq, layout) as t:
            t.declare(["tasks"])
            t.publish([OutgoingMessage("tasks", b"{}", "m1"), OutgoingMessage("tasks", b"{}", "m2")])
        # pinger check (check_health) reports its depth
        assert check_health(settings, layout, require_pinger=False).perf["queue_tasks_ready"] == 2
        # the metrics give it a series
        text = generate_latest(make_registry(settings, layout, dbs=dbs)).decode()
        assert 'enstratus_workers_queue_messages{queue="tasks",state="ready"} 2.0' in text
        # the monitor's figures hold its depth, and a cluster's Stat lists it among its queues
        snap = Fetcher(settings, layout, 1.0, dbs=dbs).fetch()
        assert {d.queue: d.ready for d in snap.depths}["tasks"] == 2
        dbs.heartbeats.beat("subscriber", "s1", ttl_s=30, details={"workers": []})
        stat = Stat.get_all(settings, layout, dbs=dbs)[0]
        assert "tasks" in stat.queues and "tasks" not in stat.empty_queues()
    finally:
        dbs.close()
    # and status --json shows it in the health it prints
    cli.main(["--home", str(made), "status", "--json"])
    assert json.loads(capsys.readouterr().out)["health"]["perf"]["queue_tasks_ready"] == 2


# -- the reader itself, on SQLite and on MariaDB ---------------------------------------------------

@pytest.fixture(params=["sqlite", "mariadb"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'prov.db'}" if request.param == "sqlite" else request.getfixturevalue("mysql_url")
    e = make_engine(url, Layout(tmp_path))
    yield e
    e.dispose()


FILE = WorkerSettings(types=(WorkerType("default", ("default",), 2, 2),
                             WorkerType("winxp", ("scan",), 0, 1)))


def test_a_new_database_is_seeded_once_from_the_file_then_read_as_stored(engine):
    # When the first reader of a new database reads it with the file's settings
    first = read_desired(engine, FILE)
    # Then it holds the file's types and queues
    assert [(t.name, t.queues, t.min, t.max) for t in first.types] == [
        ("default", ("default",), 2, 2), ("winxp", ("scan",), 0, 1)]
    assert first.queues == ("default", "scan") and first.consumers() == {"default": ["default"], "scan": ["winxp"]}
    # When an operator deletes an instance and declares a queue, a reader with the file does
    # not bring the instance back (seeded once), and sees the declared queue
    store = InstanceStore(engine)
    store.delete(store.by_type("winxp").id)
    store.add_queue("billing")
    again = read_desired(engine, FILE)
    assert [t.name for t in again.types] == ["default"]
    assert again.queues == ("default", "billing", "scan") and again.consumed == ("default",)
    # A declared queue no instance consumes is shown and counted, but takes no job yet
    assert not again.knows_queue("billing") and not again.knows_queue("scan")


def test_the_cache_reads_at_most_once_per_ttl_and_again_on_a_miss(engine):
    cache = DesiredStateCache(engine, FILE, ttl_s=3600)
    store = InstanceStore(engine)
    assert cache.get().consumed == ("default", "scan")
    # Given a queue added behind the cache's back
    store.consume(store.by_type("default").id, "extra")
    # Then the cached answer stands for the TTL, and asking about the new queue reads again
    assert "extra" not in cache.get().consumed
    assert cache.knowing("extra").knows_queue("extra") and "extra" in cache.get().consumed
    # and a disabled instance's queue still takes jobs (they wait), so submit's settings keep it
    store.update(store.by_type("winxp").id, enabled=False)
    settings = Settings(home=None, mq=None, worker=FILE, persistence=None, km_client=None, provisioning=None)
    assert cache.get(fresh=True).submit_settings(settings).worker.all_queues == ("default", "extra", "scan")


def test_submit_settings_are_made_once_per_state_and_settings(engine):
    # Given one state read, asked by every submit for the same settings
    state = DesiredStateCache(engine, FILE, ttl_s=3600).get()
    settings = Settings(home=None, mq=None, worker=FILE, persistence=None, km_client=None, provisioning=None)
    # Then it makes their copy once, and answers other settings with their own
    first = state.submit_settings(settings)
    assert state.submit_settings(settings) is first
    other = Settings(home=None, mq=None, worker=WorkerSettings(), persistence=None, km_client=None,
                     provisioning=None)
    assert state.submit_settings(other).worker.default_queue == WorkerSettings().default_queue
    assert state.submit_settings(settings) is not first and state.submit_settings(settings) == first
    # and the cache does not make two states unequal
    assert state == DesiredStateCache(engine, FILE, ttl_s=3600).get()


def test_threads_that_find_the_cache_expired_together_make_one_read(engine, monkeypatch):
    from enstratus_workers.db import desired as desired_mod

    cache = DesiredStateCache(engine, FILE, ttl_s=3600)
    cache.get()
    reads, real_read = [], desired_mod.read_desired
    gate = threading.Event()

    def slow_read(*args, **kwargs):
        reads.append(1)
        gate.wait(5)               # every other thread queues on the lock meanwhile
        return real_read(*args, **kwargs)

    monkeypatch.setattr(desired_mod, "read_desired", slow_read)
    # expired: read longer ago than the TTL (not at monotonic 0.0, which is less than a TTL ago
    # on a machine up for less than an hour)
    cache._cached = (time.monotonic() - 2 * 3600, cache._cached[1])
    threads = [threading.Thread(target=cache.get) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(reads) == 1
    # a fresh read asked for after that one began is not answered by it
    cache.get(fresh=True)
    assert len(reads) == 2
