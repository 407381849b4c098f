"""One contract suite for every queue transport: the embedded SQLite file queue and RabbitMQ
(classic and quorum queues).

Each test runs against both backends (the RabbitMQ one skips on a laptop without the broker and
fails in CI); a few at the end are about one backend's own failure modes.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest

from enstratus_workers.config.settings import MQSettings, Secret
from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.layout import Layout
from enstratus_workers.mq import OutgoingMessage, open_transport
from enstratus_workers.mq.embedded import EmbeddedTransport


def amqp_settings(url: str, names: dict, **overrides) -> MQSettings:
    u = urllib.parse.urlsplit(url)
    return MQSettings(transport="amqp", host=u.hostname, port=u.port or 5672,
                      user=urllib.parse.unquote(u.username or "guest"),
                      password=Secret(urllib.parse.unquote(u.password or "guest")),
                      vhost=urllib.parse.unquote(u.path[1:]) or "/",
                      exchange=names["exchange"], queue_prefix=names["queue_prefix"], **overrides)


class Backend:
    """Opens transports on one backend for one test and closes all of them afterwards."""

    def __init__(self, kind: str, mq: MQSettings, layout: Layout, client_name: str):
        self.kind, self.mq, self.layout, self.client_name = kind, mq, layout, client_name
        self._open = []

    def open(self, **overrides):
        transport = open_transport(replace(self.mq, **overrides), self.layout, client_name=self.client_name)
        self._open.append(transport)
        return transport

    def close_all(self):
        for transport in self._open:
            transport.close()


@pytest.fixture(params=["embedded", pytest.param("amqp", marks=pytest.mark.rabbitmq),
                        pytest.param("amqp-quorum", marks=pytest.mark.rabbitmq)])
def backend(request, tmp_path):
    if request.param.startswith("amqp"):
        mq = amqp_settings(request.getfixturevalue("rabbitmq_url"), request.getfixturevalue("amqp_names"),
                           queue_type="quorum" if request.param == "amqp-quorum" else "classic")
    else:
        mq = MQSettings(transport="embedded", embedded_path=Path("queue.sqlite"))
    b = Backend(request.param.split("-")[0], mq, Layout(tmp_path), client_name=f"ewtest {request.node.name}")
    yield b
    b.close_all()


def messages(queue: str, n: int, start: int = 0) -> list[OutgoingMessage]:
    return [OutgoingMessage(queue, json.dumps({"job_id": f"job-{i}", "action": "noop"}).encode(),
                            f"job-{i}", {"attempt": 1, "origin": "test"})
            for i in range(start, start + n)]


def drain(consumer, n: int, timeout: float = 10.0, limit: int = 1000) -> list:
    """Poll until ``n`` deliveries arrived (or the timeout); never more than asked for."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += consumer.poll(0.2, min(limit, n - len(got)))
    return got


def eventually(check, timeout: float = 10.0):
    """Wait for ``check()`` to be truthy (the broker updates counts asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def depth(transport, queue: str):
    return transport.depths([queue])[0]


# -- the contract, on every backend ----------------------------------------------------------

def test_publish_then_consume_in_order_with_body_id_and_headers_intact(backend):
    # Given a declared queue with five messages published in one batch
    t = backend.open()
    t.declare(["work"])
    sent = messages("work", 5)
    t.publish(sent)

    # When a consumer takes them
    got = drain(t.consumer(["work"], prefetch=10), 5)

    # Then they come in publish order, each exactly as published, first delivery
    assert [(d.queue, d.body, d.message_id, d.headers) for d in got] == \
        [(m.queue, m.body, m.message_id, m.headers) for m in sent]
    assert not any(d.redelivered for d in got)


def test_prefetch_bounds_unsettled_deliveries(backend):
    # Given ten messages and a consumer with prefetch 3
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 10))
    consumer = t.consumer(["work"], prefetch=3)

    # When it polls for more than that, repeatedly
    held = drain(consumer, 10, timeout=1.0)

    # Then it holds only three
    assert [d.message_id for d in held] == ["job-0", "job-1", "job-2"]

    # and settling one lets exactly one more in
    consumer.ack(held[:1])
    more = drain(consumer, 10, timeout=1.0)
    assert [d.message_id for d in more] == ["job-3"]


def test_poll_returns_at_most_limit_and_what_is_ready_without_waiting(backend):
    # Given five messages and a consumer that may hold them all
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 5))
    consumer = t.consumer(["work"], prefetch=10)
    assert [d.message_id for d in drain(consumer, 2, limit=2)] == ["job-0", "job-1"]
    time.sleep(0.3)  # the rest has arrived

    # When it polls with a long timeout
    started = time.monotonic()
    two, one = consumer.poll(5.0, 2), consumer.poll(5.0, 10)

    # Then each poll returns at once with what was ready, never more than the limit
    assert [d.message_id for d in two + one] == ["job-2", "job-3", "job-4"]
    assert len(two) == 2
    assert time.monotonic() - started < 2.0


def test_ack_removes_messages_for_good(backend):
    # Given three consumed messages
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 3))
    consumer = t.consumer(["work"], prefetch=10)
    got = drain(consumer, 3)

    # When they are acked and the consumer closes
    consumer.ack(got)
    consumer.poll(0.1, 10)  # lets a backend that settles on the polling thread send the acks
    consumer.close()

    # Then no consumer sees them again and the queue is empty
    assert t.consumer(["work"], prefetch=10).poll(0.5, 10) == []
    assert eventually(lambda: depth(t, "work").ready == 0)
    assert depth(t, "work").unacked in (0, None)


def test_nack_redelivers_with_redelivered_flag(backend):
    # Given a delivered message
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 1))
    consumer = t.consumer(["work"], prefetch=10)
    [first] = drain(consumer, 1)
    assert not first.redelivered

    # When it is nacked
    consumer.nack([first])

    # Then it comes again, marked redelivered
    [again] = drain(consumer, 1)
    assert (again.message_id, again.body, again.redelivered) == (first.message_id, first.body, True)


def test_closing_a_consumer_returns_its_unsettled_deliveries(backend):
    # Given a consumer holding two unsettled deliveries
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 2))
    first = t.consumer(["work"], prefetch=10)
    assert len(drain(first, 2)) == 2

    # When it closes without settling them
    first.close()

    # Then another consumer gets both, in order, marked redelivered
    again = drain(t.consumer(["work"], prefetch=10), 2)
    assert [(d.message_id, d.redelivered) for d in again] == [("job-0", True), ("job-1", True)]


def test_dead_letter_lands_in_the_dead_queue_and_the_consumer_keeps_going(backend):
    # Given a bad and a good message delivered
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 2))
    consumer = t.consumer(["work"], prefetch=10)
    bad, good = drain(consumer, 2)

    # When the bad one is dead-lettered and the good one acked
    consumer.dead_letter(bad, "cannot decode")
    consumer.ack([good])

    # Then the dead queue holds one message and the queue none
    assert eventually(lambda: depth(t, "work").dead == 1 and depth(t, "work").ready == 0)
    # and the consumer takes the next message as before; the dead one does not come back
    t.publish(messages("work", 1, start=7))
    assert [d.message_id for d in drain(consumer, 2, timeout=1.0)] == ["job-7"]
    assert depth(t, "work").dead == 1


def test_ack_from_another_thread_settles(backend):
    # Given deliveries taken by the polling thread
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 4))
    consumer = t.consumer(["work"], prefetch=10)
    got = drain(consumer, 4)

    # When a worker thread acks them while the polling thread keeps polling
    acker = threading.Thread(target=consumer.ack, args=(got,))
    acker.start()
    acker.join()
    assert consumer.poll(0.3, 10) == []
    consumer.close()

    # Then they are gone: nothing comes back after the consumer closed
    assert t.consumer(["work"], prefetch=10).poll(0.5, 10) == []
    assert eventually(lambda: depth(t, "work").ready == 0)


def test_a_large_batch_is_published_through_the_confirm_window_complete_and_in_order(backend):
    # Given a confirm window much smaller than the batch
    t = backend.open(confirm_window=100)
    t.declare(["work"])

    # When 5,000 messages are published in one call
    t.publish(messages("work", 5000))

    # Then every one is there, once, in order
    assert eventually(lambda: depth(t, "work").ready == 5000)
    consumer = t.consumer(["work"], prefetch=500)
    ids = []
    while len(ids) < 5000:
        batch = drain(consumer, 500, timeout=5.0, limit=500)
        assert batch, f"stalled after {len(ids)} messages"
        ids += [d.message_id for d in batch]
        consumer.ack(batch)
    assert ids == [f"job-{i}" for i in range(5000)]


def test_depths_count_ready_unacked_consumers_and_dead(backend):
    # Given three messages on one queue (one of them held by a consumer) and one on another
    t = backend.open()
    t.declare(["work", "other"])
    t.publish(messages("work", 3) + messages("other", 1, start=3))
    consumer = t.consumer(["work"], prefetch=1)
    assert len(drain(consumer, 1)) == 1

    # When the depths are read
    def read():
        work, other = t.depths(["work", "other"])
        return (work.ready, work.consumers, work.dead, other.ready, other.consumers, other.dead), work

    # Then each count is right; unacked is known only where the backend tells it
    assert eventually(lambda: read()[0] == (2, 1, 0, 1, 0, 0)), read()
    assert read()[1].unacked == (1 if backend.kind == "embedded" else None)


def test_declare_is_idempotent(backend):
    # Given a declared queue holding a message
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 1))

    # When it is declared again, from another connection too
    t.declare(["work"])
    backend.open().declare(["work", "work"])

    # Then nothing was lost and the queue works as before
    assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 1)] == ["job-0"]


def test_publish_to_an_undeclared_queue_names_the_unconfirmed_messages(backend):
    # Given one declared queue
    t = backend.open()
    t.declare(["work"])

    # When a batch goes partly to a queue that does not exist
    with pytest.raises(PublishError) as caught:
        t.publish(messages("work", 1) + messages("nowhere", 2, start=1))

    # Then the unroutable ones are named, and the routable one was published
    assert sorted(caught.value.unconfirmed) == ["job-1", "job-2"]
    consumer = t.consumer(["work"], prefetch=10)
    assert [d.message_id for d in drain(consumer, 1)] == ["job-0"]
    # and the transport keeps publishing
    t.publish(messages("work", 1, start=3))
    assert [d.message_id for d in drain(consumer, 1)] == ["job-3"]


def test_a_message_published_alone_comes_as_a_batch_does_in_order_with_them(backend):
    # Given a declared queue
    t = backend.open()
    t.declare(["work"])
    # When messages are published alone, between batches
    sent = messages("work", 6)
    t.publish_one(sent[0])
    t.publish(sent[1:3])
    t.publish_one(sent[3])
    t.publish_one(sent[4])
    t.publish(sent[5:])
    # Then they come in publish order, each exactly as published
    got = drain(t.consumer(["work"], prefetch=10), 6)
    assert [(d.queue, d.body, d.message_id, d.headers) for d in got] == \
        [(m.queue, m.body, m.message_id, m.headers) for m in sent]


def test_a_message_published_alone_to_an_undeclared_queue_is_named_and_the_next_goes(backend):
    # Given one declared queue
    t = backend.open()
    t.declare(["work"])
    # When a message alone goes to a queue that does not exist
    with pytest.raises(PublishError) as caught:
        t.publish_one(messages("nowhere", 1)[0])
    # Then it is named unconfirmed, and the transport keeps publishing, alone and in batches
    assert list(caught.value.unconfirmed) == ["job-0"]
    t.publish_one(messages("work", 1, start=1)[0])
    t.publish(messages("work", 1, start=2))
    assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 2)] == ["job-1", "job-2"]


def test_settling_a_delivery_of_an_earlier_consumer_is_a_noop(backend):
    # Given a message delivered to a consumer that then closed, and redelivered to a new one
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 1))
    old = t.consumer(["work"], prefetch=10)
    [stale] = drain(old, 1)
    old.close()
    new = t.consumer(["work"], prefetch=10)
    [current] = drain(new, 1)

    # When the stale delivery is acked, on either consumer
    new.ack([stale])
    old.ack([stale])
    new.poll(0.2, 10)

    # Then the new consumer's delivery was not settled by it: a nack still returns the message
    new.nack([current])
    [again] = drain(new, 1)
    assert (again.message_id, again.redelivered) == ("job-0", True)


_HOLDER = r"""
import json, sys, time
from pathlib import Path
from enstratus_workers.config.settings import MQSettings, Secret
from enstratus_workers.layout import Layout
from enstratus_workers.mq import open_transport
cfg = json.loads(sys.argv[1])
mq = MQSettings(transport=cfg["transport"], host=cfg["host"], port=cfg["port"], user=cfg["user"],
                password=Secret(cfg["password"]), vhost=cfg["vhost"], exchange=cfg["exchange"],
                queue_prefix=cfg["queue_prefix"], queue_type=cfg["queue_type"],
                embedded_path=Path(cfg["embedded_path"]))
t = open_transport(mq, Layout(Path(cfg["home"])), client_name="ewtest holder")
c = t.consumer(["work"], prefetch=10)
held = []
while len(held) < cfg["n"]:
    held += c.poll(0.2, 10)
print("held", len(held), flush=True)
time.sleep(600)
"""


def test_a_killed_consumers_deliveries_come_back(backend):
    # Given a consumer process holding three unsettled deliveries
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 3))
    mq = backend.mq
    cfg = {"transport": mq.transport, "queue_type": mq.queue_type, "host": mq.host, "port": mq.port, "user": mq.user,
           "password": mq.password.reveal(), "vhost": mq.vhost, "exchange": mq.exchange,
           "queue_prefix": mq.queue_prefix, "embedded_path": str(mq.embedded_path),
           "home": str(backend.layout.home), "n": 3}
    with subprocess.Popen([sys.executable, "-c", _HOLDER, json.dumps(cfg)], stdout=subprocess.PIPE,
                          text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held 3"
        finally:
            # When it is killed without a chance to give them back
            holder.kill()
            holder.wait()

    # Then another consumer gets them, marked redelivered
    again = drain(t.consumer(["work"], prefetch=10), 3)
    assert [(d.message_id, d.redelivered) for d in again] == [(f"job-{i}", True) for i in range(3)]


def test_ping_answers_on_a_live_backend(backend):
    t = backend.open()
    t.ping()
    t.ping()


# -- one backend's own failure modes ---------------------------------------------------------

def test_embedded_deliveries_of_a_consumer_that_stopped_polling_come_back_after_its_lease(tmp_path):
    # Given a consumer with a short lease holding a delivery, then no longer polling
    path = tmp_path / "queue.sqlite"
    with EmbeddedTransport(path, lease=0.3) as stalled, EmbeddedTransport(path) as live:
        live.declare(["work"])
        live.publish(messages("work", 1))
        lazy = stalled.consumer(["work"], prefetch=10)
        [held] = drain(lazy, 1)

        # When its lease runs out
        time.sleep(0.5)

        # Then another consumer gets the message, redelivered
        active = live.consumer(["work"], prefetch=10)
        [again] = drain(active, 1, timeout=3.0)
        assert (again.message_id, again.redelivered) == ("job-0", True)
        # and the late ack of the stalled consumer does not settle it
        lazy.ack([held])
        assert depth(live, "work").unacked == 1


def test_embedded_a_consumer_whose_registration_expired_while_it_stalled_says_so_and_is_reopened(tmp_path):
    # Given a consumer with a short lease that stalls past it while another polls (and reclaims)
    path = tmp_path / "queue.sqlite"
    with EmbeddedTransport(path, lease=0.3) as stalled_side, EmbeddedTransport(path) as live:
        live.declare(["work"])
        stalled = stalled_side.consumer(["work"], prefetch=10)
        time.sleep(0.5)
        other = live.consumer(["work"], prefetch=10)
        assert other.poll(0.2, 10) == []   # its housekeeping drops the expired registration
        other.close()
        live.publish(messages("work", 1))
        # When the stalled one polls again, it learns its registration is gone
        with pytest.raises(ConnectionClosed, match="expired"):
            for _ in range(20):
                stalled.poll(0.1, 10)
        # And reopened, it registers afresh and keeps what it claims
        fresh = stalled_side.consumer(["work"], prefetch=10)
        [got] = drain(fresh, 1, timeout=3.0)
        assert fresh.poll(1.2, 10) == []   # polling (and renewing) past a reclaim round
        assert depth(live, "work").unacked == 1
        fresh.ack([got])
        assert eventually(lambda: depth(live, "work").unacked == 0)


def test_embedded_queue_file_that_cannot_be_created_raises_connection_closed(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConnectionClosed):
        EmbeddedTransport(not_a_dir / "queue.sqlite")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_amqp_unreachable_broker_raises_connection_closed_quickly(tmp_path):
    # Given AMQP settings pointing at a port where nothing listens
    mq = MQSettings(transport="amqp", host="127.0.0.1", port=_free_port(), exchange="ewtest.none")
    with open_transport(mq, Layout(tmp_path)) as t:
        # When it is used, Then every entry point fails fast with ConnectionClosed
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            t.publish(messages("work", 1))
        with pytest.raises(ConnectionClosed):
            t.ping()
        with pytest.raises(ConnectionClosed):
            t.consumer(["work"], prefetch=1)
        assert time.monotonic() - started < 3.0


def _broker_connections(name: str) -> list[str]:
    """Broker-side ids of the connections whose connection_name is ``name``."""
    out = subprocess.run(["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid",
                          "client_properties"], capture_output=True, text=True, timeout=60).stdout
    tag = '{"connection_name",' + json.dumps(name) + "}"
    return [line.split("\t")[0] for line in out.splitlines() if tag in line]


@pytest.fixture
def rabbitmqctl(rabbitmq_url):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not installed: cannot make the broker drop a connection")


@pytest.mark.rabbitmq
def test_amqp_publisher_reconnects_and_consumer_reports_after_the_broker_drops_them(
        rabbitmq_url, amqp_names, rabbitmqctl, tmp_path):
    # Given a transport that has published and a consumer on it
    mq = amqp_settings(rabbitmq_url, amqp_names)
    with open_transport(mq, Layout(tmp_path), client_name=f"ewtest drop {amqp_names['exchange']}") as t:
        t.declare(["work"])
        t.publish(messages("work", 1))
        consumer = t.consumer(["work"], prefetch=10)
        assert len(drain(consumer, 1)) == 1

        # When the broker closes every connection of this client
        names = [f"{t.client_name} publisher", f"{t.client_name} consumer"]
        for name in names:
            for pid in _broker_connections(name):
                subprocess.run(["rabbitmqctl", "close_connection", pid, "test drops it"],
                               capture_output=True, timeout=60, check=True)

        # Then the consumer says so, and the next publish reconnects by itself
        with pytest.raises(ConnectionClosed):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                consumer.poll(0.2, 10)
        t.publish(messages("work", 1, start=1))
        again = drain(t.consumer(["work"], prefetch=10), 2)
        assert sorted(d.message_id for d in again) == ["job-0", "job-1"]


@pytest.mark.rabbitmq
def test_amqp_idle_publisher_keeps_its_connection_through_heartbeats(rabbitmq_url, amqp_names, rabbitmqctl,
                                                                   tmp_path):
    # Given a publisher with a 1 s heartbeat that has published once
    mq = amqp_settings(rabbitmq_url, amqp_names, heartbeat=1)
    with open_transport(mq, Layout(tmp_path), client_name=f"ewtest idle {amqp_names['exchange']}") as t:
        t.declare(["work"])
        t.publish(messages("work", 1))
        before = _broker_connections(f"{t.client_name} publisher")

        # When it sits idle for several heartbeat timeouts, then publishes again
        time.sleep(4)
        t.publish(messages("work", 1, start=1))

        # Then the broker still has the same connection (no drop, no reconnect)
        assert len(before) == 1
        assert _broker_connections(f"{t.client_name} publisher") == before


@pytest.mark.rabbitmq
@pytest.mark.parametrize("answered", [True, False], ids=["keep-alive-saw-it", "publish-saw-it"])
def test_amqp_a_lone_publish_after_the_broker_dropped_its_connection_connects_again(
        rabbitmq_url, amqp_names, rabbitmqctl, tmp_path, answered):
    # Given a transport that has published a message alone
    mq = amqp_settings(rabbitmq_url, amqp_names)
    with open_transport(mq, Layout(tmp_path), client_name=f"ewtest lone {amqp_names['exchange']}") as t:
        t.declare(["work"])
        t.publish_one(messages("work", 1)[0])
        # When the broker closes that connection
        for pid in _broker_connections(f"{t.client_name} lone publisher"):
            subprocess.run(["rabbitmqctl", "close_connection", pid, "test drops it"],
                           capture_output=True, timeout=60, check=True)
        time.sleep(0.5)
        if answered:
            # Then the publisher's keep-alive lets it go without raising, and the next message
            # alone opens a new one
            t.keep_alive()
        else:
            # Then the next message alone is not confirmed (the connection went), and says so
            with pytest.raises(ConnectionClosed):
                t.publish_one(messages("work", 1, start=1)[0])
        t.publish_one(messages("work", 1, start=2)[0])
        got = sorted(d.message_id for d in drain(t.consumer(["work"], prefetch=10), 2))
        assert got == ["job-0", "job-2"]


@pytest.mark.rabbitmq
def test_amqp_a_lone_publishers_connection_lives_through_idle_heartbeats_with_keep_alive(
        rabbitmq_url, amqp_names, rabbitmqctl, tmp_path):
    # Given a transport with a 1 s heartbeat that has published a message alone
    mq = amqp_settings(rabbitmq_url, amqp_names, heartbeat=1)
    with open_transport(mq, Layout(tmp_path), client_name=f"ewtest lone idle {amqp_names['exchange']}") as t:
        t.declare(["work"])
        t.publish_one(messages("work", 1)[0])
        before = _broker_connections(f"{t.client_name} lone publisher")
        # When it sits idle for several heartbeat timeouts, kept alive as the publisher's loop does
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            t.keep_alive()
            time.sleep(0.3)
        t.publish_one(messages("work", 1, start=1)[0])
        # Then the broker still has the same connection
        assert len(before) == 1 and _broker_connections(f"{t.client_name} lone publisher") == before


@pytest.mark.rabbitmq
def test_amqp_messages_the_broker_nacks_are_named_unconfirmed(rabbitmq_url, amqp_names, rabbitmqctl, tmp_path):
    # Given a queue the broker keeps at one message, refusing (nacking) publishes beyond that
    mq = amqp_settings(rabbitmq_url, amqp_names)
    policy = f"{amqp_names['exchange']}.full"
    with open_transport(mq, Layout(tmp_path)) as t:
        t.declare(["work"])
        subprocess.run(["rabbitmqctl", "set_policy", "--apply-to", "queues", policy,
                        "^" + re.escape(t.queue_name("work")) + "$",
                        '{"max-length": 1, "overflow": "reject-publish"}'],
                       capture_output=True, timeout=60, check=True)
        try:
            # When three messages are published to it
            with pytest.raises(PublishError) as caught:
                t.publish(messages("work", 3))

            # Then the two the broker refused are named, and the one it took is there
            assert sorted(caught.value.unconfirmed) == ["job-1", "job-2"]
            # and a message alone that the broker refuses is named too
            with pytest.raises(PublishError) as alone:
                t.publish_one(messages("work", 1, start=3)[0])
            assert list(alone.value.unconfirmed) == ["job-3"]
            assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 1)] == ["job-0"]
        finally:
            subprocess.run(["rabbitmqctl", "clear_policy", policy], capture_output=True, timeout=60)


# -- a consumer the broker stopped feeding (amqp_consumer.STARVED_CHECK_S) -----------------------

@pytest.fixture(params=["classic", "quorum"])
def starving(request, rabbitmq_url, amqp_names, tmp_path, monkeypatch):
    """An AMQP transport whose consumers look for starvation every 0.3 s."""
    from enstratus_workers.mq import amqp_consumer
    monkeypatch.setattr(amqp_consumer, "STARVED_CHECK_S", 0.3)
    mq = amqp_settings(rabbitmq_url, amqp_names, queue_type=request.param)
    with open_transport(mq, Layout(tmp_path), client_name=f"ewtest starve {amqp_names['exchange']}") as t:
        t.declare(["work"])
        yield t


def poll_for(consumer, seconds: float) -> list:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += consumer.poll(0.1, 100)
    return got


@pytest.mark.rabbitmq
def test_amqp_a_consumer_the_broker_stopped_feeding_says_so_and_a_new_one_gets_the_messages(
        starving, rabbitmq_url, caplog):
    import pika
    # Given a live consumer that the broker no longer feeds: its queue was deleted behind its
    # back and declared again, and then one message more than its prefetch came. A classic
    # queue's broker cancels the consumer: all of them wait ready. A quorum queue (RabbitMQ
    # 3.10) keeps it registered and checks out a prefetch of them to it that never arrive (the
    # orphans of rabbitmq-server#15473): the one beyond the prefetch waits ready
    consumer = starving.consumer(["work"], prefetch=10)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        conn.channel().queue_delete(starving.queue_name("work"))
    finally:
        conn.close()
    starving.declare(["work"])
    starving.publish(messages("work", 11))

    # When it goes on polling, nothing comes, and then it says why the connection is given up
    with pytest.raises(ConnectionClosed, match=r"starved: nothing delivered for .* ready message"):
        poll_for(consumer, 10)
    assert "consumer left broker node" in caplog.text

    # Then a new consumer gets every one of them
    again = starving.consumer(["work"], prefetch=20)
    assert sorted(d.message_id for d in drain(again, 11)) == sorted(f"job-{i}" for i in range(11))


@pytest.mark.rabbitmq
def test_amqp_an_idle_consumer_or_one_whose_prefetch_is_full_is_not_starved(starving):
    # Given a consumer of an empty queue
    idle = starving.consumer(["work"], prefetch=1)
    # Then polling for many looks finds nothing wrong
    assert poll_for(idle, 1.5) == []

    # Given one message held unsettled (its whole prefetch) while another waits ready
    starving.publish(messages("work", 2))
    [held] = drain(idle, 1)
    # Then it is not starved: the broker waits for the settlement, as it should
    assert poll_for(idle, 1.5) == []
    idle.ack([held])
    assert [d.message_id for d in drain(idle, 1)] == ["job-1"]
