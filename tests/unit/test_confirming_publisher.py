"""ConfirmingPublisher against a fake pika SelectConnection: every confirm outcome, no broker.

The fake runs callbacks on the publisher's own ioloop thread, as pika does: the test thread plays
the broker, injecting acks, nacks, returns and closes through ``add_callback_threadsafe``, while
``publish`` blocks in a thread of its own.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pika
import pika.exceptions
import pytest
from pika import spec
from pika.frame import Method

from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.mq import amqp_publisher
from enstratus_workers.mq.amqp_publisher import ConfirmingPublisher

WAIT_S = 5.0


class FakeIOLoop:
    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = False
        self.closed = False

    def add_callback_threadsafe(self, fn) -> None:
        self._calls.put(fn)

    def start(self) -> None:
        while not self._stopped:
            self._calls.get()()

    def stop(self) -> None:
        self._stopped = True
        self._calls.put(lambda: None)

    def close(self) -> None:
        self.closed = True


class FakeChannel:
    def __init__(self, broker: FakeBroker):
        self.broker = broker
        self.is_open = True
        self.on_close = self.on_return = self.on_confirm = None
        self.exchanges: list[str] = []

    def add_on_close_callback(self, fn) -> None:
        self.on_close = fn

    def add_on_return_callback(self, fn) -> None:
        self.on_return = fn

    def exchange_declare(self, exchange, exchange_type, durable, callback) -> None:
        self.exchanges.append(exchange)
        self.broker.conn.ioloop.add_callback_threadsafe(lambda: callback(Method(1, spec.Exchange.DeclareOk())))

    def confirm_delivery(self, ack_nack_callback, callback) -> None:
        self.on_confirm = ack_nack_callback
        self.broker.conn.ioloop.add_callback_threadsafe(lambda: callback(Method(1, spec.Confirm.SelectOk())))

    def basic_publish(self, exchange, routing_key, body, properties, mandatory) -> None:
        assert self.is_open and mandatory
        self.broker.record((exchange, routing_key, body, properties))

    def closed_by(self, reason) -> None:
        if self.is_open:
            self.is_open = False
            self.on_close(self, reason)


class FakeConnection:
    """The part of ``pika.SelectConnection`` the publisher uses; opens as soon as its loop runs."""

    def __init__(self, broker: FakeBroker, parameters, on_open_callback, on_open_error_callback,
                 on_close_callback):
        self.broker, self.parameters = broker, parameters
        self.on_open_error, self.on_closed = on_open_error_callback, on_close_callback
        self.ioloop = FakeIOLoop()
        self.is_closing = self.is_closed = False
        self.channel_ = None
        if broker.refuse is not None:
            self.ioloop.add_callback_threadsafe(lambda: on_open_error_callback(self, broker.refuse))
        else:
            self.ioloop.add_callback_threadsafe(lambda: on_open_callback(self))

    def channel(self, on_open_callback) -> None:
        self.channel_ = FakeChannel(self.broker)
        self.ioloop.add_callback_threadsafe(lambda: on_open_callback(self.channel_))

    def close(self) -> None:
        """Client close, as pika does it: the channel closes first, then the connection."""
        if self.is_closing or self.is_closed:
            return
        self.is_closing = True
        self.ioloop.add_callback_threadsafe(
            lambda: self._terminated(pika.exceptions.ChannelClosedByClient(200, "Normal shutdown"),
                                     pika.exceptions.ConnectionClosedByClient(200, "Normal shutdown")))

    def _terminated(self, channel_reason, reason) -> None:
        self.is_closing, self.is_closed = False, True
        if self.channel_ is not None:
            self.channel_.closed_by(channel_reason)
        self.on_closed(self, reason)


class FakeBroker:
    """The test's side: sees what was published and answers it, on the ioloop thread."""

    def __init__(self):
        self.conn: FakeConnection | None = None
        self.refuse: BaseException | None = None   # set: the connection fails to open
        self.published: list[tuple] = []
        self._cond = threading.Condition()

    def connect(self, parameters, on_open_callback, on_open_error_callback, on_close_callback):
        self.conn = FakeConnection(self, parameters, on_open_callback, on_open_error_callback, on_close_callback)
        return self.conn

    def record(self, message) -> None:
        with self._cond:
            self.published.append(message)
            self._cond.notify_all()

    def wait_published(self, n: int) -> list[tuple]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.published) >= n, WAIT_S), self.published
            return list(self.published)

    def sync(self) -> None:
        """Return once every callback handed to the ioloop so far has run."""
        done = threading.Event()
        self.conn.ioloop.add_callback_threadsafe(done.set)
        assert done.wait(WAIT_S)

    def _call(self, fn) -> None:
        self.conn.ioloop.add_callback_threadsafe(fn)

    def ack(self, tag: int, multiple: bool = False) -> None:
        self._call(lambda: self.conn.channel_.on_confirm(Method(1, spec.Basic.Ack(tag, multiple))))

    def nack(self, tag: int, multiple: bool = False) -> None:
        self._call(lambda: self.conn.channel_.on_confirm(Method(1, spec.Basic.Nack(tag, multiple))))

    def return_(self, tag: int) -> None:
        exchange, key, body, props = self.published[tag - 1]
        method = spec.Basic.Return(312, "NO_ROUTE", exchange, key)
        self._call(lambda: self.conn.channel_.on_return(self.conn.channel_, method, props, body))

    def drop(self) -> None:
        """The broker goes away: the connection is closed, then its channel, then the owner told."""
        lost = pika.exceptions.StreamLostError("Transport indicated EOF")
        self._call(lambda: self.conn._terminated(lost, lost))


@pytest.fixture
def broker(monkeypatch):
    b = FakeBroker()
    monkeypatch.setattr(amqp_publisher.pika, "SelectConnection", b.connect)
    return b


class Rig:
    """Starts publishers on the fake broker and runs their blocking ``publish`` in a pool."""

    def __init__(self, broker: FakeBroker, pool: ThreadPoolExecutor):
        self.broker, self.pool = broker, pool
        self.publishers: list[ConfirmingPublisher] = []

    def start(self, **kwargs) -> ConfirmingPublisher:
        p = ConfirmingPublisher(pika.ConnectionParameters(), ["ex", "ex.dead"], **kwargs)
        p.start(WAIT_S)
        self.publishers.append(p)
        return p

    def publish(self, publisher: ConfirmingPublisher, *ids: str, sent: int | None = None) -> Future:
        """``publisher.publish`` of messages ``ids``, once ``sent`` (default: all) have gone out."""
        before = len(self.broker.published)
        done = self.pool.submit(publisher.publish, items(*ids))
        self.broker.wait_published(before + (len(ids) if sent is None else sent))
        return done


@pytest.fixture
def rig(broker):
    with ThreadPoolExecutor(max_workers=2) as pool:
        r = Rig(broker, pool)
        yield r
        for p in r.publishers:
            p.close()


def eventually(check) -> bool:
    """``check()`` turned true within ``WAIT_S`` (the ioloop thread ends just after a batch does)."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def items(*ids: str) -> list[tuple]:
    return [("ex", "work", f"body-{i}".encode(), pika.BasicProperties(message_id=i), i) for i in ids]


def test_start_declares_the_exchanges_and_enters_confirm_mode(broker, rig):
    # Given / When a publisher is started
    publisher = rig.start()

    # Then it declared both exchanges, in order, and is alive
    assert broker.conn.channel_.exchanges == ["ex", "ex.dead"]
    assert broker.conn.channel_.on_confirm is not None
    assert publisher.alive


def test_a_connection_that_cannot_open_is_reported_as_connection_closed(broker):
    # Given a broker that refuses the connection
    broker.refuse = pika.exceptions.AMQPConnectionError("refused")
    publisher = ConfirmingPublisher(pika.ConnectionParameters(), ["ex"])

    # When the publisher starts, Then it says so and is dead
    with pytest.raises(ConnectionClosed, match="cannot connect"):
        publisher.start(WAIT_S)
    assert not publisher.alive


def test_acked_messages_return_without_error(broker, rig):
    # Given a started publisher
    publisher = rig.start()

    # When three messages are published and the broker acks each one
    done = rig.publish(publisher, "a", "b", "c")
    sent = list(broker.published)
    for tag in (1, 2, 3):
        broker.ack(tag)

    # Then publish returns, and every message went out as given, to the given exchange and key
    assert done.result(WAIT_S) is None
    assert [(e, k, b, p.message_id) for e, k, b, p in sent] == \
        [("ex", "work", b"body-a", "a"), ("ex", "work", b"body-b", "b"), ("ex", "work", b"body-c", "c")]


def test_a_nacked_message_is_reported_unconfirmed_and_the_others_are_not(broker, rig):
    # Given three messages in flight
    publisher = rig.start()
    done = rig.publish(publisher, "a", "b", "c")

    # When the broker nacks the second and acks the others
    broker.ack(1)
    broker.nack(2)
    broker.ack(3)

    # Then publish raises PublishError naming only the nacked one; the publisher stays usable
    with pytest.raises(PublishError) as caught:
        done.result(WAIT_S)
    assert list(caught.value.unconfirmed) == ["b"]
    assert publisher.alive


def test_one_multiple_ack_settles_every_message_up_to_its_tag(broker, rig):
    # Given five messages in flight
    publisher = rig.start()
    done = rig.publish(publisher, *"abcde")

    # When the broker acks tags 1..3 with one multiple ack, then the rest with another
    broker.ack(3, multiple=True)
    broker.sync()
    assert not done.done()        # 4 and 5 are still unconfirmed
    broker.ack(5, multiple=True)

    # Then all five are confirmed
    assert done.result(WAIT_S) is None


def test_a_multiple_nack_fails_every_message_up_to_its_tag(broker, rig):
    # Given four messages in flight
    publisher = rig.start()
    done = rig.publish(publisher, *"abcd")

    # When the broker nacks tags 1..2 at once and acks the rest at once
    broker.nack(2, multiple=True)
    broker.ack(4, multiple=True)

    # Then the first two are unconfirmed, in tag order
    with pytest.raises(PublishError) as caught:
        done.result(WAIT_S)
    assert list(caught.value.unconfirmed) == ["a", "b"]


def test_a_message_returned_before_its_ack_is_unconfirmed(broker, rig):
    # Given three messages in flight
    publisher = rig.start()
    done = rig.publish(publisher, "a", "b", "c")

    # When the broker returns the second (no queue bound) and then acks all three, as RabbitMQ
    # acks an unroutable mandatory message after its basic.return
    broker.return_(2)
    broker.ack(3, multiple=True)

    # Then only the returned one is reported
    with pytest.raises(PublishError) as caught:
        done.result(WAIT_S)
    assert list(caught.value.unconfirmed) == ["b"]

    # And the return is not held against a later message with the same id
    again = rig.publish(publisher, "b")
    broker.ack(4)
    assert again.result(WAIT_S) is None


def test_no_more_than_window_messages_are_in_flight(broker, rig):
    # Given a publisher with a window of 2
    publisher = rig.start(window=2)

    # When four messages are published
    done = rig.publish(publisher, *"abcd", sent=2)

    # Then two go out, and each confirm lets the next one go
    broker.sync()
    assert len(broker.published) == 2
    broker.ack(1)
    broker.wait_published(3)
    broker.sync()
    assert len(broker.published) == 3
    broker.ack(3, multiple=True)
    broker.wait_published(4)
    broker.ack(4)
    assert done.result(WAIT_S) is None


class CountingEvent(threading.Event):
    """An Event that counts the waits that ran out."""

    def __init__(self):
        super().__init__()
        self.ran_out = 0

    def wait(self, timeout=None) -> bool:
        got = super().wait(timeout)
        self.ran_out += not got
        return got


@pytest.fixture
def batches(monkeypatch) -> list:
    """Every batch ``publish`` makes from now on, with a ``CountingEvent`` as its ``done``."""
    made = []

    @dataclasses.dataclass(eq=False)
    class CountedBatch(amqp_publisher._Batch):
        done: threading.Event = dataclasses.field(default_factory=CountingEvent)

        def __post_init__(self):
            made.append(self)

    monkeypatch.setattr(amqp_publisher, "_Batch", CountedBatch)
    return made


def test_a_broker_that_never_answers_has_its_connection_dropped(broker, rig, batches):
    # Given a publisher whose stall timeout is short, and a broker that never confirms
    publisher = rig.start(stall_timeout=0.2)

    # When a message is published
    done = rig.publish(publisher, "a")

    # Then after one stall timeout without a confirm (counted from the publish, not a second
    # one after it) the connection is dropped and publish raises ConnectionClosed (nothing was
    # confirmed); the publisher is dead for good
    with pytest.raises(ConnectionClosed, match="nothing confirmed"):
        done.result(WAIT_S)
    assert [b.done.ran_out for b in batches] == [1]
    assert broker.conn.is_closed
    assert eventually(lambda: not publisher.alive)
    with pytest.raises(ConnectionClosed):
        publisher.publish(items("b"))


def test_a_confirm_within_the_stall_timeout_gives_the_batch_another_one(broker, rig, batches):
    # Given a publisher with a stall timeout, and two messages published
    publisher = rig.start(stall_timeout=1.0)
    done = rig.publish(publisher, "a", "b")

    # When the broker confirms the first at once and never the second
    broker.ack(1)

    # Then the connection is dropped one whole timeout after that progress stopped, not before,
    # and publish says which message was not confirmed
    with pytest.raises(PublishError) as raised:
        done.result(WAIT_S)
    assert list(raised.value.unconfirmed) == ["b"]
    assert [b.done.ran_out for b in batches] == [2]
    assert broker.conn.is_closed


def test_a_connection_lost_mid_batch_reports_what_was_not_confirmed(broker, rig):
    # Given three messages in flight, the first one acked
    publisher = rig.start()
    done = rig.publish(publisher, "a", "b", "c")
    broker.ack(1)
    broker.sync()

    # When the broker connection is lost
    broker.drop()

    # Then publish raises PublishError for the two unconfirmed, saying the connection was lost
    with pytest.raises(PublishError, match="connection lost") as caught:
        done.result(WAIT_S)
    assert sorted(caught.value.unconfirmed) == ["b", "c"]
    assert eventually(lambda: not publisher.alive)


def test_a_window_held_back_batch_is_failed_whole_when_the_connection_drops(broker, rig):
    # Given a window of 1: one message in flight, two waiting their turn
    publisher = rig.start(window=1)
    done = rig.publish(publisher, "a", "b", "c", sent=1)

    # When the connection drops before any confirm
    broker.drop()

    # Then nothing was confirmed: ConnectionClosed, and none of the waiting ones was sent
    with pytest.raises(ConnectionClosed, match="nothing confirmed"):
        done.result(WAIT_S)
    assert len(broker.published) == 1


def test_closing_mid_batch_ends_the_waiting_publish(broker, rig):
    # Given two messages in flight, none confirmed
    publisher = rig.start()
    done = rig.publish(publisher, "a", "b")

    # When the owner closes the publisher from another thread
    publisher.close()

    # Then the waiting publish ends with ConnectionClosed, the ioloop thread has stopped, and
    # close can be called again
    with pytest.raises(ConnectionClosed, match="nothing confirmed"):
        done.result(WAIT_S)
    assert broker.conn.ioloop.closed
    assert not publisher.alive
    publisher.close()
