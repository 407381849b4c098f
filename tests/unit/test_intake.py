"""The subscriber's intake thread over the embedded transport (a SQLite file, no server): it hands
deliveries over with a wake-up byte, gives back what arrives while paused, reconnects after a
lost connection and follows a change of queues."""

from __future__ import annotations

import os
import queue

import pytest

from enstratus_workers.daemons.subscriber import intake as intake_mod
from enstratus_workers.daemons.subscriber.intake import Intake
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.mq.base import OutgoingMessage
from enstratus_workers.mq.embedded import EmbeddedTransport
from tests.servicehome import wait_until

pytestmark = pytest.mark.timeout(30)


class Broker:
    """Opens the embedded queue file for the intake; ``refuse`` makes the next opens fail."""

    def __init__(self, path):
        self.path, self.refuse, self.opened = path, 0, 0
        self.admin = EmbeddedTransport(path)
        self.admin.declare(["work", "other"])

    def open_transport(self, mq_settings, layout, client_name):
        if self.refuse:
            self.refuse -= 1
            raise ConnectionClosed("broker down")
        self.opened += 1
        return EmbeddedTransport(self.path)

    def publish(self, q: str, *ids: str) -> None:
        self.admin.publish([OutgoingMessage(q, b"{}", message_id=i) for i in ids])

    def depth(self, q: str):
        return self.admin.depths([q])[0]


@pytest.fixture
def broker(tmp_path, monkeypatch):
    b = Broker(tmp_path / "queue.sqlite")
    monkeypatch.setattr(intake_mod, "open_transport", b.open_transport)
    yield b
    b.admin.close()


@pytest.fixture
def make_intake():
    started = []

    def _make(queues=("work",), prefetch=10) -> tuple[Intake, int]:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        it = Intake(None, None, list(queues), prefetch, wake_w, "subscriber@test")
        started.append((it, wake_r, wake_w))
        return it, wake_r

    yield _make
    for it, r, w in started:
        it.stop()
        os.close(r)
        os.close(w)


def taken(it: Intake, n: int, timeout: float = 5.0) -> list:
    """The next ``n`` deliveries the intake handed over."""
    got = []
    wait_until(lambda: _drain(it, got) >= n, timeout)
    return got


def _drain(it: Intake, into: list) -> int:
    try:
        while True:
            into.extend(it.deliveries.get_nowait())
    except queue.Empty:
        return len(into)


def test_deliveries_are_handed_over_with_a_wake_up_byte(broker, make_intake):
    # Given three jobs queued and a started intake
    broker.publish("work", "a", "b", "c")
    it, wake = make_intake()
    it.start()
    # Then they reach the main loop's queue, and the loop was woken
    got = taken(it, 3)
    assert sorted(d.message_id for d in got) == ["a", "b", "c"]
    assert os.read(wake, 64).startswith(b"d")
    assert it.connected.is_set() and it.reconnects == 0
    # When they are acked through the intake, they leave the queue for good
    it.ack(got)
    assert wait_until(lambda: (broker.depth("work").ready, broker.depth("work").unacked) == (0, 0), 5)


def test_settling_goes_through_the_intakes_consumer(broker, make_intake):
    # Given two deliveries in hand
    broker.publish("work", "a", "b")
    it, _ = make_intake()
    it.start()
    a, b = sorted(taken(it, 2), key=lambda d: d.message_id)
    # When one is acked and the other given back
    it.ack([a])
    it.nack([b])
    # Then only the given-back one comes again, marked redelivered
    again = taken(it, 1)
    assert [(d.message_id, d.redelivered) for d in again] == [("b", True)]


def test_while_paused_new_deliveries_are_held_and_go_back_on_close(broker, make_intake):
    # Given a running, paused intake
    it, _ = make_intake(prefetch=1)
    it.start()
    assert it.connected.wait(5)
    it.pause()
    # When a job arrives
    broker.publish("work", "late")
    # Then the main loop never sees it, and it is held once, not handed back and forth
    assert wait_until(lambda: it.held == 1, 2)
    assert taken(it, 1, timeout=0.5) == []
    assert it.held == 1
    assert broker.depth("work").unacked == 1
    # And when the intake stops, it is back on its queue, ready for another subscriber
    it.stop()
    assert broker.depth("work").ready == 1


def test_a_broker_that_is_down_is_retried_until_it_is_back(broker, make_intake):
    # Given a broker that refuses the first connection
    broker.refuse = 1
    broker.publish("work", "a")
    it, _ = make_intake()
    # When the intake starts
    it.start()
    # Then it retries after its back-off, counts the reconnect, and then delivers
    assert [d.message_id for d in taken(it, 1)] == ["a"]
    assert it.reconnects == 1 and broker.opened == 1 and it.connected.is_set()


def test_a_change_of_queues_reopens_the_consumer_and_gives_back_what_it_held(broker, make_intake):
    # Given an intake consuming "work" and holding one unsettled delivery of it
    broker.publish("work", "old")
    it, _ = make_intake()
    it.start()
    assert [d.message_id for d in taken(it, 1)] == ["old"]
    # When it is told to consume "other" instead, and jobs arrive on both
    it.set_queues(["other"])
    assert wait_until(lambda: broker.opened == 2, 5)
    broker.publish("other", "new")
    broker.publish("work", "ignored")
    # Then it takes the one on "other"; "work" keeps its job and the unsettled one, given back
    assert [d.message_id for d in taken(it, 1)] == ["new"]
    assert wait_until(lambda: broker.depth("work").ready == 2, 5)
    assert it.queues == ["other"]


def test_with_no_queue_wanted_it_connects_to_nothing_until_one_is(broker, make_intake):
    # Given an intake whose every queue was disabled
    broker.publish("other", "a")
    it, _ = make_intake(queues=())
    it.start()
    assert not it.connected.wait(0.7) and broker.opened == 0
    # When a queue is wanted again, it connects and consumes it
    it.set_queues(["other"])
    assert [d.message_id for d in taken(it, 1)] == ["a"]


def test_stopping_an_intake_that_never_started_raises_nothing(broker, make_intake):
    # Given an intake whose subscriber failed before starting it (a worker pool that could not
    # bind its socket, say), When the subscriber's cleanup stops it, Then that raises nothing:
    # the start's own error is the one the operator must see, not "cannot join thread"
    it, _ = make_intake()
    it.stop()
    assert not it.thread.is_alive()


def test_an_ack_that_fails_reopens_the_consumer_and_the_message_comes_back(broker, make_intake):
    # Given a delivery in hand
    broker.publish("work", "a")
    it, _ = make_intake()
    it.start()
    (a,) = taken(it, 1)
    # When acking it fails as the embedded queue fails when its file stays locked
    def locked(deliveries):
        raise ConnectionClosed("embedded queue: database is locked")
    it._consumer.ack = locked
    it.ack([a])   # the caller (the recorder's thread, the main loop) goes on
    # Then the consumer is reopened, and the message comes back marked redelivered
    again = taken(it, 1)
    assert [(d.message_id, d.redelivered) for d in again] == [("a", True)]
    assert broker.opened == 2 and it.reconnects == 1
    # And the new consumer's ack settles it for good
    it.ack(again)
    assert wait_until(lambda: (broker.depth("work").ready, broker.depth("work").unacked) == (0, 0), 5)
