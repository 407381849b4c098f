"""The transport contract, continued: broker-held delays and the dead-letter queue (list, redrive,
purge), on the embedded queue and RabbitMQ (classic and quorum queues) alike.

Delays are short (300-800 ms); a delayed message must not come before 0.8 x its delay, and must
come within a few seconds after it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pika
import pytest
from test_transport import amqp_settings, backend, depth, drain, eventually, messages  # noqa: F401

from enstratus_workers.errors import PublishError
from enstratus_workers.layout import Layout
from enstratus_workers.mq import OutgoingMessage, open_transport
from enstratus_workers.mq.amqp_delay import LADDER, delay_bucket
from enstratus_workers.mq.base import MAX_DELAY_MS
from enstratus_workers.mq.embedded import EmbeddedTransport


def delayed(queue: str, job: int, delay_ms: int) -> OutgoingMessage:
    return OutgoingMessage(queue, json.dumps({"job_id": f"job-{job}", "action": "noop"}).encode(),
                           f"job-{job}", {"attempt": 2, "origin": "test"}, delay_ms=delay_ms)


def arrivals(consumer, n: int, timeout: float) -> list[tuple[float, object]]:
    """Poll until ``n`` deliveries came; each with the monotonic time it was seen."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += [(time.monotonic(), d) for d in consumer.poll(0.02, n - len(got))]
    return got


def dead_ones(t, queue: str, n: int, reasons: list[str]) -> list:
    """Publish ``n`` messages and dead-letter each with its reason; return the deliveries."""
    t.publish(messages(queue, n))
    consumer = t.consumer([queue], prefetch=n)
    got = drain(consumer, n)
    for delivery, reason in zip(got, reasons):
        consumer.dead_letter(delivery, reason)
    consumer.poll(0.1, 1)  # a backend that settles on the polling thread sends them now
    consumer.close()
    assert eventually(lambda: depth(t, queue).dead == n)
    return got


# -- delays ----------------------------------------------------------------------------------

def test_a_delayed_message_comes_after_its_delay_and_not_before(backend):
    # Given a queue and a consumer on it
    t = backend.open()
    t.declare(["work"])
    consumer = t.consumer(["work"], prefetch=10)

    # When a delayed and an immediate message are published in one batch
    sent = time.monotonic()
    t.publish([delayed("work", 1, 600), *messages("work", 1)])

    # Then the immediate one comes at once, and the delayed one not before 0.8 x its delay
    [(_, first)] = arrivals(consumer, 1, timeout=0.4)
    assert first.message_id == "job-0"
    assert arrivals(consumer, 1, timeout=0.48 - (time.monotonic() - sent)) == []
    assert depth(t, "work").delayed in (1, None)  # the embedded queue knows; RabbitMQ does not say
    # and it does come soon after, as published (no delay bookkeeping in its headers), first delivery
    [(when, later)] = arrivals(consumer, 1, timeout=5.0)
    assert when - sent >= 0.48
    assert (later.message_id, later.body, later.headers, later.redelivered) == \
        ("job-1", delayed("work", 1, 600).body, {"attempt": 2, "origin": "test"}, False)
    assert depth(t, "work").delayed in (0, None)


def test_a_short_delay_is_not_held_up_behind_a_longer_one(backend):
    # Given a long delay published before a short one
    t = backend.open()
    t.declare(["work"])
    consumer = t.consumer(["work"], prefetch=10)
    sent = time.monotonic()
    t.publish([delayed("work", 1, 800)])
    t.publish([delayed("work", 2, 300)])

    # When both come due
    got = arrivals(consumer, 2, timeout=5.0)

    # Then the short one comes first, each after its own delay
    assert [d.message_id for _, d in got] == ["job-2", "job-1"]
    assert got[0][0] - sent >= 0.24 and got[1][0] - sent >= 0.64


def test_a_delay_is_held_by_the_backend_across_a_restart_of_every_process_of_ours(backend):
    # Given a delayed message published, and a consumer that saw nothing yet
    first = backend.open()
    first.declare(["work"])
    sent = time.monotonic()
    first.publish([delayed("work", 1, 500)])
    early = first.consumer(["work"], prefetch=10)
    assert early.poll(0.1, 10) == []

    # When the consumer and the whole transport (every connection we had) go away
    early.close()
    first.close()

    # Then a new transport's consumer gets the message once it is due, not before
    [(when, again)] = arrivals(backend.open().consumer(["work"], prefetch=10), 1, timeout=5.0)
    assert (again.message_id, when - sent >= 0.4) == ("job-1", True)


def test_a_delayed_message_for_an_undeclared_queue_is_named_unconfirmed(backend):
    # Given one declared queue
    t = backend.open()
    t.declare(["work"])

    # When delayed messages go to it and to a queue that does not exist
    with pytest.raises(PublishError) as caught:
        t.publish([delayed("work", 1, 300), delayed("nowhere", 2, 300)])

    # Then the one for the missing queue is named, and the other arrives after its delay
    assert list(caught.value.unconfirmed) == ["job-2"]
    assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 1, timeout=5.0)] == ["job-1"]


def test_a_nacked_delayed_message_comes_back_without_a_second_delay(backend):
    # Given a delayed message that came due and was delivered
    t = backend.open()
    t.declare(["work"])
    consumer = t.consumer(["work"], prefetch=10)
    t.publish([delayed("work", 1, 300)])
    [first] = drain(consumer, 1, timeout=5.0)

    # When it is given back
    consumer.nack([first])

    # Then it is redelivered at once
    [(_, again)] = arrivals(consumer, 1, timeout=0.25)
    assert (again.message_id, again.redelivered) == ("job-1", True)


def test_delay_must_be_a_whole_number_of_ms_within_what_a_broker_holds():
    for bad in (-1, 1.5, MAX_DELAY_MS + 1):
        with pytest.raises(ValueError):
            OutgoingMessage("work", b"{}", "job-1", delay_ms=bad)
    assert OutgoingMessage("work", b"{}", "job-1").delay_ms == 0


def test_amqp_delays_round_up_to_a_ladder_at_most_28_percent_later():
    # Given every delay from 1 ms to a day, sampled
    samples = sorted({*range(1, 2000), *range(2000, 86_400_000, 9973), *LADDER})
    # Then each is held for its bucket: never shorter, at most 28 % longer (within 1 ms for tiny ones)
    for ms in samples:
        bucket = delay_bucket(ms)
        assert ms <= bucket <= max(ms * 1.28, ms + 1), ms
    # and the delays from a second to a day share ten buckets a decade
    assert len({delay_bucket(ms) for ms in range(1000, 86_400_001, 997)}) <= 50
    assert [delay_bucket(ms) for ms in (0, 300, 500, 800)] == [0, 315, 500, 800]


# -- dead letters ----------------------------------------------------------------------------

def test_dead_letters_lists_what_dead_letter_put_there_without_taking_it_out(backend):
    # Given three messages, two of them dead-lettered with a reason
    t = backend.open()
    t.declare(["work"])
    before = int(time.time() * 1000)
    t.publish(messages("work", 3))
    consumer = t.consumer(["work"], prefetch=10)
    bad, good, worse = drain(consumer, 3)
    consumer.dead_letter(bad, "cannot decode")
    consumer.ack([good])
    consumer.dead_letter(worse, "exhausted 3 attempts: boom")
    consumer.poll(0.1, 1)
    assert eventually(lambda: depth(t, "work").dead == 2)
    after = int(time.time() * 1000)

    # When they are listed, twice
    listed, again = t.dead_letters("work"), t.dead_letters("work")

    # Then each is there, as published, with its reason and when it died
    sent = {m.message_id: m for m in messages("work", 3)}
    assert [(d.queue, d.message_id, d.body, d.headers, d.reason) for d in listed] == [
        ("work", "job-0", sent["job-0"].body, sent["job-0"].headers, "cannot decode"),
        ("work", "job-2", sent["job-2"].body, sent["job-2"].headers, "exhausted 3 attempts: boom")]
    assert all(before - 1000 <= d.dead_at_ms <= after + 1000 for d in listed)
    # and listing took nothing out: the second listing is the same and the depth unchanged
    # (a quorum queue's count may lag a moment behind the listing's hand-back)
    assert again == listed
    assert eventually(lambda: depth(t, "work").dead == 2)
    assert t.dead_letters("work", limit=1) == listed[:1]


def test_dead_letter_from_another_thread_keeps_its_reason(backend):
    # Given a delivery taken by the polling thread
    t = backend.open()
    t.declare(["work"])
    t.publish(messages("work", 1))
    consumer = t.consumer(["work"], prefetch=10)
    [delivery] = drain(consumer, 1)

    # When a worker thread dead-letters it while the polling thread keeps polling
    worker = threading.Thread(target=consumer.dead_letter, args=(delivery, "killed its worker twice"))
    worker.start()
    worker.join()
    assert consumer.poll(0.3, 10) == []

    # Then it is in the dead-letter queue with that reason
    assert eventually(lambda: depth(t, "work").dead == 1)
    assert [(d.message_id, d.reason) for d in t.dead_letters("work")] == [("job-0", "killed its worker twice")]


def test_redrive_of_one_id_puts_exactly_that_one_back(backend):
    # Given three dead letters
    t = backend.open()
    t.declare(["work"])
    dead_ones(t, "work", 3, ["r0", "r1", "r2"])

    # When one of them is redriven
    assert t.redrive("work", ["job-1"]) == 1

    # Then that one is consumable again, as first published: fresh, not redelivered
    [back] = drain(t.consumer(["work"], prefetch=10), 1)
    sent = messages("work", 3)[1]
    assert (back.message_id, back.body, back.headers, back.redelivered) == \
        ("job-1", sent.body, sent.headers, False)
    # and only that one left the dead-letter queue
    assert eventually(lambda: [d.message_id for d in t.dead_letters("work")] == ["job-0", "job-2"])
    assert eventually(lambda: depth(t, "work").dead == 2)


def test_redrive_of_all_moves_every_dead_letter_back_and_empties_the_dead_queue(backend):
    # Given three dead letters, one of them redriven and dead-lettered again
    t = backend.open()
    t.declare(["work"])
    dead_ones(t, "work", 3, ["r0", "r1", "r2"])
    assert t.redrive("work", ["job-2"]) == 1
    consumer = t.consumer(["work"], prefetch=10)
    [twice] = drain(consumer, 1)
    consumer.dead_letter(twice, "second death")
    consumer.poll(0.1, 1)
    assert eventually(lambda: depth(t, "work").dead == 3)
    assert [d.reason for d in t.dead_letters("work") if d.message_id == "job-2"] == ["second death"]

    # When all are redriven
    assert t.redrive("work") == 3

    # Then the dead-letter queue is empty and each comes back once, as published
    assert eventually(lambda: depth(t, "work").dead == 0)
    assert t.dead_letters("work") == []
    back = drain(consumer, 3)
    assert sorted((d.message_id, d.headers) for d in back) == [(f"job-{i}", {"attempt": 1, "origin": "test"})
                                                               for i in range(3)]
    assert consumer.poll(0.3, 10) == []


def test_redrive_of_unknown_ids_or_of_nothing_moves_nothing(backend):
    # Given one dead letter
    t = backend.open()
    t.declare(["work", "empty"])
    dead_ones(t, "work", 1, ["r0"])

    # When ids that are not there, no ids, or a queue without dead letters are redriven
    moved = [t.redrive("work", ["job-7", "nope"]), t.redrive("work", []), t.redrive("empty"),
             t.redrive("never-declared")]

    # Then nothing moved and the dead letter is still there
    assert moved == [0, 0, 0, 0]
    assert [d.message_id for d in t.dead_letters("work")] == ["job-0"]
    assert t.dead_letters("never-declared") == []
    assert t.consumer(["work"], prefetch=10).poll(0.3, 10) == []


def test_purge_dead_deletes_the_named_dead_letters_then_all(backend):
    # Given three dead letters
    t = backend.open()
    t.declare(["work"])
    dead_ones(t, "work", 3, ["r0", "r1", "r2"])

    # When one is purged by id, then the rest
    one = t.purge_dead("work", ["job-1", "nope"])
    assert eventually(lambda: [d.message_id for d in t.dead_letters("work")] == ["job-0", "job-2"])
    rest = t.purge_dead("work")

    # Then each purge counts what it deleted, and nothing is left anywhere
    assert (one, rest) == (1, 2)
    assert eventually(lambda: depth(t, "work").dead == 0)
    assert t.dead_letters("work") == []
    assert t.consumer(["work"], prefetch=10).poll(0.3, 10) == []
    assert (t.purge_dead("work"), t.purge_dead("never-declared"), t.purge_dead("work", [])) == (0, 0, 0)


def test_purge_dead_before_deletes_the_letters_that_died_before_the_cutoff_only(backend):
    import time as _time

    # Given two dead letters, then, a moment later, two more
    t = backend.open()
    t.declare(["work"])
    dead_ones(t, "work", 2, ["old0", "old1"])
    _time.sleep(0.05)
    cutoff = int(_time.time() * 1000)
    _time.sleep(0.05)
    t.publish([OutgoingMessage("work", b"{}", message_id=f"young-{i}") for i in range(2)])
    consumer = t.consumer(["work"], prefetch=2)
    for delivery in drain(consumer, 2):
        consumer.dead_letter(delivery, "young")
    consumer.poll(0.1, 1)  # a backend that settles on the polling thread sends them now
    consumer.close()
    assert eventually(lambda: depth(t, "work").dead == 4)

    # When the letters that died before the cutoff are purged
    purged = t.purge_dead_before("work", cutoff)

    # Then the two old ones are gone and the young ones stay, in their order
    assert purged == 2
    assert eventually(lambda: [d.message_id for d in t.dead_letters("work")] == ["young-0", "young-1"])
    assert (t.purge_dead_before("work", cutoff), t.purge_dead_before("never-declared", cutoff)) == (0, 0)


def test_a_delayed_message_dead_lettered_and_redriven_is_still_as_published(backend):
    # Given a delayed message that came due, was dead-lettered, and listed
    t = backend.open()
    t.declare(["work"])
    consumer = t.consumer(["work"], prefetch=10)
    t.publish([delayed("work", 1, 300)])
    [d] = drain(consumer, 1, timeout=5.0)
    consumer.dead_letter(d, "bad arguments")
    consumer.poll(0.1, 1)
    assert eventually(lambda: depth(t, "work").dead == 1)
    [listed] = t.dead_letters("work")
    assert (listed.headers, listed.reason) == ({"attempt": 2, "origin": "test"}, "bad arguments")

    # When it is redriven
    assert t.redrive("work") == 1

    # Then it comes at once (the delay is spent), with its own headers only
    [(_, back)] = arrivals(consumer, 1, timeout=2.0)
    assert (back.message_id, back.headers, back.redelivered) == ("job-1", {"attempt": 2, "origin": "test"}, False)


# -- one backend's own --------------------------------------------------------------------------

@pytest.mark.rabbitmq
def test_amqp_a_message_the_broker_dead_lettered_lists_the_brokers_reason_and_time(rabbitmq_url, amqp_names, tmp_path):
    # Given a message rejected by a plain AMQP client, without our reason header
    mq = amqp_settings(rabbitmq_url, amqp_names)
    with open_transport(mq, Layout(tmp_path)) as t:
        t.declare(["work"])
        t.publish(messages("work", 1))
        before = int(time.time() * 1000)
        conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        try:
            channel = conn.channel()
            method, _, _ = channel.basic_get(t.queue_name("work"), auto_ack=False)
            channel.basic_reject(method.delivery_tag, requeue=False)
        finally:
            conn.close()

        # When the dead letters are listed
        listed = eventually(lambda: t.dead_letters("work"))

        # Then it shows with the broker's reason and time, its own headers without the broker's record
        [d] = listed
        assert (d.message_id, d.reason, d.headers) == ("job-0", "rejected", {"attempt": 1, "origin": "test"})
        assert before - 2000 <= d.dead_at_ms <= int(time.time() * 1000) + 1000


@pytest.mark.rabbitmq
def test_amqp_classic_delay_queues_expire_and_quorum_ones_do_not(rabbitmq_url, amqp_names, tmp_path):
    # Given delayed messages published on classic and on quorum queues
    for kind in ("classic", "quorum"):
        mq = amqp_settings(rabbitmq_url, {k: v + kind for k, v in amqp_names.items()}, queue_type=kind)
        with open_transport(mq, Layout(tmp_path)) as t:
            t.declare(["work"])
            t.publish([delayed("work", 1, 300)])
            name = t.queue_name("work") + ".delay.315"

            # Then the delay queue is declared as the kind of the others, expiring only if classic
            conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
            try:
                channel = conn.channel()
                args = {"x-queue-type": kind, "x-message-ttl": 315, "x-dead-letter-exchange": mq.exchange,
                        "x-dead-letter-routing-key": "work"}
                args.update({"x-expires": 60_630} if kind == "classic" else
                            {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
                channel.queue_declare(name, durable=True, arguments=args)  # equivalent: no PRECONDITION_FAILED
            finally:
                conn.close()
            assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 1, timeout=5.0)] == ["job-1"]


_OLD_SCHEMA = """
CREATE TABLE queues (name TEXT PRIMARY KEY);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body BLOB NOT NULL, message_id TEXT,
    headers TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT 'ready', consumer TEXT,
    lease_until REAL, redelivered INTEGER NOT NULL DEFAULT 0, dead_reason TEXT, created REAL NOT NULL);
CREATE INDEX messages_by_state ON messages (state, queue);
CREATE TABLE consumers (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT,
    queues TEXT NOT NULL, heartbeat_until REAL NOT NULL);
INSERT INTO queues VALUES ('work');
INSERT INTO messages (queue, body, message_id, created) VALUES ('work', X'7B7D', 'job-0', 0);
INSERT INTO messages (queue, body, message_id, state, dead_reason, created)
    VALUES ('work', X'7B7D', 'job-9', 'dead', 'old reason', 0);
"""


def test_embedded_queue_file_of_an_earlier_release_is_migrated_in_place(tmp_path):
    # Given a queue file from before delays, holding a ready message and a dead letter
    path = tmp_path / "queue.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(_OLD_SCHEMA)
    old.close()

    # When the transport opens it
    with EmbeddedTransport(path) as t:
        # Then nothing was lost: the message is delivered, the dead letter listed (time unknown)
        consumer = t.consumer(["work"], prefetch=10)
        assert [d.message_id for d in drain(consumer, 1)] == ["job-0"]
        assert [(d.message_id, d.reason, d.dead_at_ms) for d in t.dead_letters("work")] == \
            [("job-9", "old reason", None)]
        # and delays work on it
        t.publish([delayed("work", 1, 300)])
        assert consumer.poll(0.1, 10) == []
        assert [d.message_id for d in drain(consumer, 1, timeout=3.0)] == ["job-1"]
    # and opening it again changes nothing
    with EmbeddedTransport(path) as t:
        assert [d.message_id for d in t.dead_letters("work")] == ["job-9"]
