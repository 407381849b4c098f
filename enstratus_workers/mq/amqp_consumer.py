"""The AMQP consumer: ``basic_consume`` with manual acks on a ``BlockingConnection`` of its own.

Split from ``amqp.py`` (which re-exports it) to keep each module about one thing; like that
module, it turns pika's exceptions into ``ConnectionClosed``. The transport hands it what it needs
(its connection, opened on a node of the transport's ranking, broker queue names, the dead
exchange, and whom to tell when the connection is lost): it does not import ``amqp.py``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pika
import pika.exceptions

from enstratus_workers.clock import now_ms
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.mq.amqp_common import DEAD_AT_HEADER, ERROR_HEADER, PIKA_ERRORS, delivered_headers, why
from enstratus_workers.mq.base import MAX_REASON_CHARS, Consumer, Delivery

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class AmqpTag:
    """A delivery tag and the consumer session it belongs to: tags restart at 1 on every channel,
    so a tag from another session must never reach this channel."""

    session: object
    delivery_tag: int


#: A consumer that holds nothing unsettled and got nothing for this long asks the broker how
#: many messages its queues hold ready; two such looks in a row that find some, with nothing
#: delivered between them, mean the broker stopped feeding it (``AmqpConsumer`` docstring).
STARVED_CHECK_S = 30.0


class AmqpConsumer(Consumer):
    """``basic_consume`` with manual acks on a ``BlockingConnection`` of its own.

    pika is not thread-safe: settlement from another thread is queued with
    ``add_callback_threadsafe`` and runs on the polling thread during its next ``poll`` (or in
    ``close``, which flushes it first). ``close`` belongs to the polling thread too.

    ``dead_letter`` keeps the reason: it publishes a copy of the message to the dead exchange
    with ``x-error`` and ``x-dead-at-ms`` headers on a confirm-mode channel of this connection,
    and acks the original only once the copy is confirmed (a crash in between may leave the
    message both dead and redelivered: at least once). A ``basic.reject`` would lose custom
    headers, so it is only the fallback when the copy cannot be published.

    ``connection`` is this consumer's own (it closes it); ``prefetch`` is at least 1 (the
    transport checks it before connecting); ``queues`` pairs each logical queue with
    its broker queue name, in consuming order; ``dead_exchange`` is where dead-letter copies go,
    routed by the logical queue; ``on_lost(reason)`` is called once if the connection is lost
    while polling (the transport then starts its next connection on another node). When the node
    dies, the broker gives the unsettled deliveries back to the queue (a quorum queue's leader, on
    another node, sees the consumer's channel go): open a new consumer to get them again.

    A broker can stop feeding a live consumer: after a quorum queue's leader election, RabbitMQ
    can leave deliveries checked out to a consumer that never gets them, using up its prefetch
    until that consumer goes (rabbitmq/rabbitmq-server#15473). Nothing on the connection says
    so. So ``poll`` looks, every ``STARVED_CHECK_S`` without a delivery while this consumer holds
    nothing unsettled (its whole prefetch free, as far as it knows), at how many messages its
    queues hold ready (a passive declare on its own channel); if two looks in a row find some,
    it treats the connection as lost (``on_lost``, ``ConnectionClosed``), and the new consumer
    its owner opens gets them. A consumer of an empty queue costs one declare per queue a look.
    """

    def __init__(self, connection: pika.BlockingConnection, queues: Sequence[tuple[str, str]], prefetch: int, *,
                 dead_exchange: str, on_lost: Callable[[str], None] = lambda _reason: None):
        self._conn = connection
        self._on_lost = on_lost
        self.closed = False
        self._session = object()
        self._buffer: list[Delivery] = []
        self._outstanding: dict[int, None] = {}   # delivered, unsettled tags in delivery order
        self._owner = threading.get_ident()       # the polling thread, once poll runs
        self._dead_exchange = dead_exchange
        self._confirming = None                   # channel for dead-letter copies, opened on first use
        self._names = [name for _, name in queues]
        self._last_delivery = self._last_look = time.monotonic()
        self._ready_seen = False                  # the last starvation look found messages ready
        try:
            self._channel = self._conn.channel()
            # per-consumer prefetch (global QoS is unsupported by quorum queues): split the bound
            # across the queues so the channel never holds more than `prefetch` unsettled
            share, extra = divmod(prefetch, len(queues))
            for i, (q, name) in enumerate(queues):
                self._channel.basic_qos(prefetch_count=max(1, share + (i < extra)))
                self._channel.basic_consume(name, functools.partial(self._on_message, q), auto_ack=False)
        except PIKA_ERRORS as exc:
            self._close_quietly()
            raise ConnectionClosed(f"AMQP consumer cannot consume {[q for q, _ in queues]}: {exc!r}") from exc

    def _on_message(self, queue, _channel, method, properties, body) -> None:
        self._outstanding[method.delivery_tag] = None
        self._buffer.append(Delivery(queue=queue, body=body, message_id=properties.message_id,
                                     redelivered=bool(method.redelivered),
                                     tag=AmqpTag(self._session, method.delivery_tag),
                                     headers=delivered_headers(properties.headers)))

    def poll(self, timeout: float, limit: int) -> list[Delivery]:
        if self.closed:
            raise ConnectionClosed("AMQP consumer is closed")
        self._owner = threading.get_ident()
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while True:
                # returns as soon as a delivery (or a queued settlement) is dispatched; with
                # deliveries already buffered it only sends queued settlements and reads what came
                wait = 0.0 if self._buffer else max(0.0, deadline - time.monotonic())
                self._conn.process_data_events(time_limit=wait)
                if self._buffer or time.monotonic() >= deadline:
                    break
            starved = self._starved()
        except PIKA_ERRORS as exc:
            self._close_quietly()
            self._on_lost(why(exc))
            raise ConnectionClosed(f"AMQP consumer connection lost: {why(exc)}") from exc
        if starved:
            self._close_quietly()
            self._on_lost(starved)
            raise ConnectionClosed(f"AMQP consumer starved: {starved}")
        out, self._buffer[:limit] = self._buffer[:limit], []
        return out

    def _starved(self) -> str | None:
        """Why the broker seems to have stopped feeding this consumer, or None (class docstring)."""
        now = time.monotonic()
        if self._buffer:
            self._last_delivery, self._ready_seen = now, False
            return None
        if self._outstanding or now - max(self._last_delivery, self._last_look) < STARVED_CHECK_S:
            return None
        self._last_look = now
        ready = sum(self._channel.queue_declare(name, passive=True).method.message_count for name in self._names)
        if self._buffer:   # a delivery came while the declare waited for its answer
            self._last_delivery, self._ready_seen = time.monotonic(), False
            return None
        if ready and self._ready_seen:
            return (f"nothing delivered for {now - self._last_delivery:.0f} s while its queues hold "
                    f"{ready} ready message(s) and it holds none unsettled")
        self._ready_seen = ready > 0
        return None

    def _submit(self, fn: Callable[[], None]) -> None:
        if self.closed:
            return  # the broker has given them back already
        if threading.get_ident() == self._owner:
            try:
                fn()
            except PIKA_ERRORS as exc:
                log.warning("AMQP settlement lost with the connection (%r); the broker redelivers", exc)
            return
        try:
            self._conn.add_callback_threadsafe(fn)
        except PIKA_ERRORS as exc:
            log.warning("AMQP settlement lost with the connection (%r); the broker redelivers", exc)

    def _mine(self, deliveries: Sequence[Delivery]) -> list[int]:
        return [d.tag.delivery_tag for d in deliveries
                if isinstance(d.tag, AmqpTag) and d.tag.session is self._session]

    def _settle(self, tags: list[int], send: Callable[[int, bool], None]) -> None:
        """On the polling thread: one ``multiple=True`` frame for the oldest outstanding run of
        ``tags``, single frames for the rest. Tags already settled are skipped, not resent."""
        pending = {t for t in tags if t in self._outstanding}
        run = []
        for t in self._outstanding:      # insertion order is delivery-tag order
            if t not in pending:
                break
            run.append(t)
        if run:
            send(run[-1], True)
        for t in run:
            del self._outstanding[t]
            pending.discard(t)
        for t in sorted(pending):
            send(t, False)
            del self._outstanding[t]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._mine(deliveries)
        if tags:
            self._submit(functools.partial(self._settle, tags,
                                           lambda t, m: self._channel.basic_ack(t, multiple=m)))

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._mine(deliveries)
        if tags:
            self._submit(functools.partial(self._settle, tags,
                                           lambda t, m: self._channel.basic_nack(t, multiple=m, requeue=True)))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        tags = self._mine([delivery])
        if tags:
            log.warning("dead-lettering message %s from queue %s: %s", delivery.message_id, delivery.queue, reason)
            self._submit(functools.partial(self._dead_letter_now, delivery, tags[0], str(reason)))

    def _dead_letter_now(self, delivery: Delivery, tag: int, reason: str) -> None:
        """On the polling thread: copy with the reason, confirmed, then ack; else reject."""
        if tag not in self._outstanding:
            return  # settled already
        try:
            if self._confirming is None or not self._confirming.is_open:
                self._confirming = self._conn.channel()
                self._confirming.confirm_delivery()
            headers = {**delivery.headers, ERROR_HEADER: reason[:MAX_REASON_CHARS],
                       DEAD_AT_HEADER: now_ms()}
            # raises on a nack or a return (mandatory): the copy is then not known to be there
            self._confirming.basic_publish(
                self._dead_exchange, delivery.queue, delivery.body,
                pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=delivery.message_id, headers=headers),
                mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError,
                pika.exceptions.ChannelClosed) as exc:
            log.warning("could not keep the reason of dead letter %s (%r): rejecting it to the "
                        "queue's dead-letter exchange instead", delivery.message_id, exc)
            # requeue=False: the queue's dead-letter exchange routes it to the .dead queue
            self._settle([tag], lambda t, _m: self._channel.basic_reject(t, requeue=False))
            return
        self._settle([tag], lambda t, m: self._channel.basic_ack(t, multiple=m))

    def close(self) -> None:
        """Run settlements queued by other threads, then close: the broker requeues the rest."""
        if self.closed:
            return
        try:
            if self._conn.is_open:
                self._conn.process_data_events(time_limit=0)
        except PIKA_ERRORS as exc:
            log.info("AMQP consumer connection already gone at close: %r", exc)
        self._close_quietly()

    def _close_quietly(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._outstanding.clear()
        try:
            if self._conn.is_open:
                self._conn.close()
        except PIKA_ERRORS:
            pass
