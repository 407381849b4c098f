"""On RabbitMQ: a ring on one host wakes the publishers of the others through the broker, a
burst of rings sends a few messages, and a host does not hear its own rings."""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import MQSettings, Secret
from enstratus_workers.daemons.publisher.daemon import Publisher
from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.jobs.wakeup import PUBLISHER, Ringer
from enstratus_workers.layout import Layout
from enstratus_workers.mq.amqp_wake import WakeListener, WakeRinger
from tests import servicehome


def _mq(url: str, names: dict) -> MQSettings:
    u = urllib.parse.urlsplit(url)
    return MQSettings(transport="amqp", host=u.hostname, port=u.port or 5672,
                      user=urllib.parse.unquote(u.username or "guest"),
                      password=Secret(urllib.parse.unquote(u.password or "guest")),
                      vhost=urllib.parse.unquote(u.path[1:]) or "/",
                      exchange=names["exchange"], queue_prefix=names["queue_prefix"])


@pytest.fixture
def links():
    made = []
    yield made
    for link in made:
        link.close()


def _started(links, link):
    links.append(link.start())
    assert link.connected.wait(15), "no broker connection"   # a listener's queue is bound by then
    return link


def _heard_within(event: threading.Event, seconds: float = 10) -> bool:
    return event.wait(seconds)


def _counted_within(count, seconds: float = 5) -> int:
    """The ringer counts a message once basic_publish returns, which may be after the listener
    has heard it (two threads, two connections): wait for the count instead of racing it."""
    deadline = time.monotonic() + seconds
    while count() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return count()


def test_a_ring_on_host_a_wakes_the_publisher_on_host_b(rabbitmq_url, amqp_names, links):
    # Given a publisher's listener on host B and a ringer on host A
    mq = _mq(rabbitmq_url, amqp_names)
    woken = threading.Event()
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    # When host A rings
    mouth.ring()
    # Then host B's publisher is woken
    assert _heard_within(woken)
    assert ear.heard >= 1 and _counted_within(lambda: mouth.sent) >= 1


def test_a_host_does_not_hear_its_own_rings(rabbitmq_url, amqp_names, links):
    # Given a listener and a ringer on the same host (its local bell rang already)
    mq = _mq(rabbitmq_url, amqp_names)
    woken = threading.Event()
    ear = _started(links, WakeListener(mq, "host-a", "ewtest publisher", woken.set))
    other = threading.Event()
    _started(links, WakeListener(mq, "host-c", "ewtest publisher", other.set))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    # When it rings
    mouth.ring()
    # Then the other host hears it and the ringer's own host does not
    assert _heard_within(other)
    time.sleep(0.3)
    assert not woken.is_set() and ear.heard == 0


def test_a_ringer_sends_nothing_while_no_other_host_has_a_publisher_then_rings_again(
        rabbitmq_url, amqp_names, links, monkeypatch):
    from enstratus_workers.mq import amqp_wake

    monkeypatch.setattr(amqp_wake, "OTHERS_TTL_S", 0.2)
    # Given a listener (a publisher on host B), and a ringer on host A whose database shows no
    # publisher of another host yet
    mq = _mq(rabbitmq_url, amqp_names)
    woken = threading.Event()
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set))
    others = threading.Event()
    looks = []

    def look():
        looks.append(time.monotonic())
        return others.is_set()
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber", others=look))
    # (once its first look has settled: a ring before it goes out)
    deadline = time.monotonic() + 10
    while mouth.skipped == 0 and time.monotonic() < deadline:
        mouth.ring()
        time.sleep(0.01)
    time.sleep(0.3)
    sent, heard = mouth.sent, ear.heard
    woken.clear()
    # When host A rings
    for _ in range(50):
        mouth.ring()
    # Then no message was sent, nothing was heard, and the rings were counted
    time.sleep(0.3)
    assert mouth.sent == sent and ear.heard == heard and not woken.is_set() and mouth.skipped >= 51
    # When host B's publisher shows up (its heartbeat row), Then within the look's interval a
    # ring reaches it again
    others.set()
    deadline = time.monotonic() + 10
    while not woken.is_set() and time.monotonic() < deadline:
        mouth.ring()
        time.sleep(0.05)
    assert woken.is_set() and mouth.sent >= 1
    # and the looks are spaced by the interval, not one per ring
    assert len(looks) < 60


def test_a_ringer_whose_look_fails_rings(rabbitmq_url, amqp_names, links):
    mq = _mq(rabbitmq_url, amqp_names)
    woken = threading.Event()
    _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set))

    def broken():
        raise RuntimeError("the database is away")
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber", others=broken))
    mouth.ring()
    assert _heard_within(woken) and mouth.skipped == 0


def test_a_burst_of_ten_thousand_rings_sends_a_few_messages(rabbitmq_url, amqp_names, links):
    # Given host B listening and host A's store ringer with the broker ring attached (no local
    # publisher: the run directory is empty)
    mq = _mq(rabbitmq_url, amqp_names)
    woken = threading.Event()
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    with tempfile.TemporaryDirectory() as run_dir:
        store_ringer = Ringer(Path(run_dir), PUBLISHER)
        store_ringer.also(mouth.ring)
        # When 10,000 commits ring in a burst
        for _ in range(10_000):
            store_ringer.ring()
        store_ringer.close()
    # Then host B is woken, by far fewer messages than rings (each wakes at most one outbox read)
    assert _heard_within(woken)
    time.sleep(0.3)
    assert 1 <= mouth.sent < 1_000 and ear.heard <= mouth.sent


def _publisher_of_host_b(tmp_path, amqp_names, props=None):
    """Host B's publisher (``publisher@b``) running in a thread, its broker listener bound:
    (layout, settings, publisher, thread); the caller stops it (``request_stop``, join)."""
    home = servicehome.make_home(tmp_path, amqp=amqp_names, worker_props={"host.name": "host-b", **(props or {})})
    layout = Layout(home)
    settings = load_settings(layout)
    publisher = Publisher(settings, layout, "b")
    ready = threading.Event()
    runner = threading.Thread(target=publisher.run, args=(ready.set,), daemon=True)
    runner.start()
    assert ready.wait(30)
    assert publisher._ear.connected.wait(15)
    return layout, settings, publisher, runner


def test_a_publisher_relays_a_job_committed_on_another_host_at_its_ring(rabbitmq_url, amqp_names, tmp_path):
    # Given a publisher on host B whose safety-net poll is a minute away, on RabbitMQ
    layout, settings, publisher, runner = _publisher_of_host_b(tmp_path, amqp_names, {"publisher.poll_interval": 60})
    dbs = open_databases(settings.worker, layout)
    mouth = WakeRinger(settings.mq, "host-a", "ewtest submitter").start()
    try:
        time.sleep(1.0)   # the first pass is over and the publisher waits on its bell
        # When host A commits a job and rings through the broker (its store's local ringer is
        # closed: on one machine it would find host B's bell, which another host cannot)
        for r in dbs.ringers:
            r.close()
        (created,) = dbs.jobs.submit_jobs([NewJob("noop", "{}", settings.worker.default_queue, 1)])
        assert mouth.connected.wait(15)
        mouth.ring()
        # Then host B's publisher relays it long before its poll would have
        deadline = time.monotonic() + 15
        while dbs.jobs.get(created.job_id).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dbs.jobs.get(created.job_id).status == "queued"
        assert publisher._ear.heard >= 1
    finally:
        mouth.close()
        publisher.request_stop()
        runner.join(30)
        dbs.close()


@pytest.mark.mysql
def test_a_job_posted_to_the_admin_api_wakes_the_publishers_of_other_hosts(
        tmp_path, rabbitmq_url, amqp_names, mysql_url, links):
    """The admin daemon rings through the broker too: a job POSTed on host A does not wait for
    host B's publisher to poll."""
    import json
    import urllib.request
    from dataclasses import replace

    from enstratus_workers.admin import load_admin_settings
    from enstratus_workers.daemons.admin import AdminService
    from tests.unit.admin_helpers import TOKEN, serving, set_token

    home = servicehome.make_home(tmp_path, amqp=amqp_names, mysql_url=mysql_url,
                                 worker_props={"host.name": "host-a"})
    set_token(home)
    layout = Layout(home)
    settings = load_settings(layout)
    woken = threading.Event()
    _started(links, WakeListener(settings.mq, "host-b", "ewtest publisher", woken.set))
    # host B's publisher, as the admin's ringer finds it: its heartbeat row
    dbs = open_databases(replace(settings.worker, host_name="host-b"), layout)
    try:
        dbs.heartbeats.beat("publisher", "b", ttl_s=60)
    finally:
        dbs.close()
    service = AdminService(settings, layout, "a", replace(load_admin_settings(layout), port=0))
    with serving(service):
        # the admin's ringer connects in the background; a ring before that is the poll's to cover
        time.sleep(1.0)
        req = urllib.request.Request(service.url + "jobs", method="POST",
                                     data=json.dumps({"action": "noop", "arguments": {}}).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status in (200, 201, 202)
        assert _heard_within(woken), "host B's publisher was not rung"


def test_a_refused_exchange_declare_leaves_no_broker_connection_open(rabbitmq_url, amqp_names, links):
    import gc

    import pika
    import psutil

    from enstratus_workers.mq.amqp_wake import wake_exchange

    # Given the wake exchange already declared with another type: every declare is refused (406)
    mq = _mq(rabbitmq_url, amqp_names)
    with pika.BlockingConnection(pika.URLParameters(rabbitmq_url)) as admin:
        admin.channel().exchange_declare(wake_exchange(mq), "direct", durable=False, auto_delete=True)

    def to_broker() -> int:
        me = psutil.Process()
        listed = getattr(me, "net_connections", None) or me.connections   # psutil < 6: connections
        return sum(1 for c in listed("tcp")
                   if c.raddr and c.raddr.port == mq.port and c.status == psutil.CONN_ESTABLISHED)

    before = to_broker()
    gc.disable()   # the leaked connections sit in reference cycles: only a full collection frees them
    try:
        # When a ringer tries for a few seconds (its retries 0.5, 1, 2 s apart)
        ringer = WakeRinger(mq, "host-a", "wake-test")
        links.append(ringer.start())
        time.sleep(4)
        # Then it never connected, and it holds no connection to the broker
        assert not ringer.connected.is_set()
        assert to_broker() <= before
    finally:
        gc.enable()


def test_a_ring_carries_the_recorded_jobs_and_a_cancel_to_the_other_hosts(rabbitmq_url, amqp_names, links):
    # Given host B's listener, passing on what the rings carry, and a ringer on host A
    mq = _mq(rabbitmq_url, amqp_names)
    woken, named, cancelled = threading.Event(), [], threading.Event()
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set,
                                       on_done=named.append, on_cancel=cancelled.set))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    # When host A rings its publishers only, Then host B's publisher hears it, and nothing else
    mouth.ring()
    assert _heard_within(woken)
    time.sleep(0.3)
    assert named == [] and not cancelled.is_set()
    # When host A records two outcomes, Then host B's waiters are rung with their jobs
    mouth.ring_done([12, 5])
    assert servicehome.wait_until(lambda: named, 10)
    assert named == [[5, 12]] and not cancelled.is_set()
    # When a job is cancelled on host A, Then host B's subscribers are rung
    mouth.ring_cancel()
    assert _heard_within(cancelled)
    assert ear.heard == 3 and named == [[5, 12]]


def test_more_recorded_jobs_than_fit_are_a_plain_ring_of_every_waiter(rabbitmq_url, amqp_names, links):
    from enstratus_workers.jobs.wakeup import RING_MAX

    mq = _mq(rabbitmq_url, amqp_names)
    named = []
    _started(links, WakeListener(mq, "host-b", "ewtest publisher", lambda: None, on_done=named.append))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    # When host A records more outcomes at once than a ring can name
    mouth.ring_done(range(10**9, 10**9 + RING_MAX // 5))
    # Then host B's waiters get a ring naming no job: each of them reads its row
    assert servicehome.wait_until(lambda: named, 10)
    assert named == [[]]


def test_rings_close_together_share_one_message(rabbitmq_url, amqp_names, links, monkeypatch):
    from enstratus_workers.mq import amqp_wake

    # (a gather wide enough that a loaded machine cannot split the two rings)
    monkeypatch.setattr(amqp_wake, "GATHER_S", 0.3)
    mq = _mq(rabbitmq_url, amqp_names)
    named = []
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", lambda: None, on_done=named.append))
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    # When a recorder rings room for its publishers, then the outcomes for the waiters
    mouth.ring()
    mouth.ring_done([7])
    mouth.ring_done([8])
    # Then one message carried them all
    assert servicehome.wait_until(lambda: named, 10)
    time.sleep(0.5)
    assert named == [[7, 8]] and ear.heard == 1 and mouth.sent == 1


@pytest.mark.parametrize("said", ["7,x", "-7", "", 7, "7" * 30, "1," * 5000, b"\xff"])
def test_a_ring_naming_jobs_badly_is_a_plain_ring(rabbitmq_url, amqp_names, links, said):
    """Anyone who may publish to the wake exchange may send anything: a ``done`` that is not a
    short list of ids costs each waiter of the host a read, and stops nothing."""
    import pika

    from enstratus_workers.mq.amqp_wake import DONE_HEADER, wake_exchange

    mq = _mq(rabbitmq_url, amqp_names)
    named, woken = [], threading.Event()
    _started(links, WakeListener(mq, "host-b", "ewtest publisher", woken.set, on_done=named.append))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq_url)) as conn:
        conn.channel().basic_publish(wake_exchange(mq), "", b"host-x",
                                     pika.BasicProperties(headers={DONE_HEADER: said}))
    assert _heard_within(woken)
    assert servicehome.wait_until(lambda: named, 10)
    assert named == [[]]
    # and the listener still hears the next ring
    woken.clear()
    mouth = _started(links, WakeRinger(mq, "host-a", "ewtest subscriber"))
    mouth.ring_done([3])
    assert servicehome.wait_until(lambda: len(named) == 2, 10) and named[1] == [3]


def test_a_wait_on_host_b_is_woken_by_the_outcome_recorded_on_host_a(
        rabbitmq_url, amqp_names, tmp_path, monkeypatch):
    from dataclasses import replace

    from enstratus_workers.jobs import submit as submit_mod
    from enstratus_workers.jobs.values import Outcome
    from enstratus_workers.jobs.wakeup import SUBSCRIBER, Bell
    from enstratus_workers.mq.amqp_wake import ring_through_broker

    # Given host B's publisher, and a wait on host B whose safety net is a minute away
    monkeypatch.setattr(submit_mod, "WAIT_SAFETY_NET_S", 60.0)
    layout, settings, publisher, runner = _publisher_of_host_b(tmp_path, amqp_names)
    # (host B's subscriber, as the ringers find it: its pid file, and its cancel bell)
    (layout.run_dir / "subscriber@b.pid").write_text(f"{threading.get_native_id()}\n")
    owner_bell = Bell(layout.run_dir, "b", SUBSCRIBER)
    waiting = open_databases(settings.worker, layout)
    # and host A's store, whose local rings cannot reach host B (closed, as on another machine),
    # ringing through the broker
    host_a = replace(settings, worker=replace(settings.worker, host_name="host-a"))
    dbs = open_databases(host_a.worker, layout)
    for r in dbs.ringers:
        r.close()
    mouth = ring_through_broker(host_a, dbs.ringers, "ewtest subscriber")
    done, reads = [], []
    get = waiting.jobs.get
    monkeypatch.setattr(waiting.jobs, "get", lambda job_id: (reads.append(job_id), get(job_id))[1])
    try:
        assert mouth.connected.wait(15)
        other, _ = dbs.jobs.submit(NewJob("noop", "{}", settings.worker.default_queue, 1))
        job, _ = dbs.jobs.submit(NewJob("noop", "{}", settings.worker.default_queue, 1))
        waiter = threading.Thread(target=lambda: done.append(
            submit_mod.wait_for(waiting, job.job_id, timeout=30, run_dir=layout.run_dir)))
        waiter.start()
        assert servicehome.wait_until(lambda: list((layout.run_dir / "bells").glob("waiter@*.bell")), 5)

        def record(job_id):
            now = int(time.time() * 1000)
            dbs.jobs.record_outcomes([Outcome(job_id=job_id, attempt=1, status="succeeded", worker="w",
                                              owner="o", start_ms=now, end_ms=now, result="1", error=None)])
        # When host A records another job's outcome, Then the wait goes on without a read
        record(other.job_id)
        time.sleep(1.0)
        assert waiter.is_alive() and reads == [job.job_id]
        # When host A records the waited job's outcome, Then the wait ends, at once, with it
        record(job.job_id)
        waiter.join(15)
        assert not waiter.is_alive() and done[0].status == "succeeded"
        assert reads == [job.job_id, job.job_id]
        # When a job is cancelled on host A, Then host B's subscriber is rung
        third, _ = dbs.jobs.submit(NewJob("noop", "{}", settings.worker.default_queue, 1))
        owner_bell.drain()
        dbs.jobs.cancel(third.job_id)
        assert owner_bell.wait(15)
    finally:
        mouth.close()
        owner_bell.close()
        publisher.request_stop()
        runner.join(30)
        waiting.close()
        dbs.close()


def test_a_cancel_made_with_no_broker_connection_reaches_other_hosts_through_this_hosts_publisher(
        rabbitmq_url, amqp_names, tmp_path, links):
    # Given host B's publisher (its ear on the broker open), another host's listener, and a
    # store on host B opened as the CLI opens it: no broker connection of its own
    layout, settings, publisher, runner = _publisher_of_host_b(tmp_path, amqp_names, {"publisher.poll_interval": 60})
    cancelled = threading.Event()
    _started(links, WakeListener(settings.mq, "host-c", "ewtest publisher", lambda: None, on_cancel=cancelled.set))
    (layout.run_dir / "publisher@b.pid").write_text(f"{threading.get_native_id()}\n")   # how ringers find it
    dbs = open_databases(settings.worker, layout)
    try:
        job, _ = dbs.jobs.submit(NewJob("noop", "{}", settings.worker.default_queue, 1))
        assert servicehome.wait_until(lambda: dbs.jobs.get(job.job_id).status == "queued", 15)
        relayed = publisher.published
        # When the job is cancelled on host B
        assert dbs.jobs.cancel(job.job_id).verdict == "cancelled"
        # Then the other host's subscribers are rung through the broker, by host B's publisher,
        # long before their once-a-second look, and the publisher relayed nothing for it
        assert _heard_within(cancelled, 5)
        assert publisher._ear.cancels_passed_on == 1 and publisher.published == relayed
        # and a store with a broker ringer of its own (the admin's) rings the other hosts
        # itself: the publisher is not asked too
        from enstratus_workers.mq.amqp_wake import ring_through_broker

        second, _ = dbs.jobs.submit(NewJob("noop", "{}", settings.worker.default_queue, 1))
        own = ring_through_broker(settings, dbs.ringers, "ewtest admin")
        links.append(own)
        assert own.connected.wait(15)
        cancelled.clear()
        dbs.jobs.cancel(second.job_id)
        assert _heard_within(cancelled, 5)
        time.sleep(0.3)
        assert publisher._ear.cancels_passed_on == 1
    finally:
        publisher.request_stop()
        runner.join(30)
        dbs.close()


def test_a_flood_of_cancel_rings_is_passed_on_as_a_few_messages(rabbitmq_url, amqp_names, links):
    # Given host B's publisher's listener and another host's
    mq = _mq(rabbitmq_url, amqp_names)
    cancelled = threading.Event()
    heard = []
    _started(links, WakeListener(mq, "host-c", "ewtest publisher", lambda: None,
                                 on_cancel=lambda: (heard.append(1), cancelled.set())))
    ear = _started(links, WakeListener(mq, "host-b", "ewtest publisher", lambda: None))
    # When 10,000 cancel rings reach host B's publisher in a burst (a datagram anyone on the
    # host can send) and each is passed on
    started = time.monotonic()
    for _ in range(10_000):
        ear.ring_cancel()
    # Then the other host hears the cancel, from at most one message per 20 ms
    assert _heard_within(cancelled)
    time.sleep(0.3)
    allowed = (time.monotonic() - started) / 0.02 + 2
    assert 1 <= ear.cancels_passed_on <= allowed and len(heard) == ear.cancels_passed_on
    # and one more cancel later is passed on too
    cancelled.clear()
    ear.ring_cancel()
    assert _heard_within(cancelled, 5)


def test_a_cancel_reaches_other_hosts_while_the_publisher_works_through_a_backlog(
        rabbitmq_url, amqp_names, tmp_path, links):
    # Given host B's publisher relaying a backlog one job per pass (it never waits on its bell)
    layout, settings, publisher, runner = _publisher_of_host_b(
        tmp_path, amqp_names, {"publisher.poll_interval": 60, "publisher.batch": 1, "publisher.window": 100_000})
    cancelled = threading.Event()
    _started(links, WakeListener(settings.mq, "host-c", "ewtest publisher", lambda: None, on_cancel=cancelled.set))
    (layout.run_dir / "publisher@b.pid").write_text(f"{threading.get_native_id()}\n")
    dbs = open_databases(settings.worker, layout)
    try:
        jobs = dbs.jobs.submit_jobs([NewJob("noop", "{}", settings.worker.default_queue, 1)] * 3000)
        assert servicehome.wait_until(lambda: publisher.published >= 20, 30), publisher.published
        # When the last job is cancelled on host B, by a store with no broker connection
        assert dbs.jobs.cancel(jobs[-1].job_id).verdict == "cancelled"
        # Then the other host hears it while the backlog is still being relayed
        assert _heard_within(cancelled, 10), (publisher.published, publisher._ear.cancels_passed_on)
        assert dbs.jobs.counts()["pending"] > 0, "heard only once the backlog was relayed (or it was too short to tell)"
        assert publisher._ear.cancels_passed_on >= 1
    finally:
        publisher.request_stop()
        runner.join(30)
        dbs.close()
