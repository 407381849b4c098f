"""The AMQP transport (RabbitMQ through pika): the only modules that import pika are this one and
``amqp_publisher.py``, and pika's exceptions stop here, turned into ``ConnectionClosed``.

Broker layout, all durable: actions go to the direct exchange ``mq.exchange``; logical queue ``q``
is the queue ``mq.queue_prefix + q`` bound with routing key ``q`` and declared with
``x-dead-letter-exchange = mq.exchange + ".dead"``, so a rejected message is routed (by the broker,
with its original routing key) to ``mq.queue_prefix + q + ".dead"``.

Connections: publishing uses a confirm-mode ``SelectConnection`` in its own thread
(``amqp_publisher``); declare / depths / ping share one ``BlockingConnection``; each consumer has
its own ``BlockingConnection``. After ``ConnectionClosed`` the transport reconnects lazily on the
next call; a consumer does not (its deliveries are void once its connection is gone): open a new one.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pika
import pika.exceptions

from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConnectionClosed, TransportError
from enstratus_workers.mq.amqp_publisher import ConfirmingPublisher
from enstratus_workers.mq.base import Consumer, Delivery, OutgoingMessage, QueueDepth, Transport

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0   # TCP connect plus AMQP handshake
NOT_FOUND = 404
_PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)


@dataclass(frozen=True, eq=False)
class AmqpTag:
    """A delivery tag and the consumer session it belongs to: tags restart at 1 on every channel,
    so a tag from another session must never reach this channel."""

    session: object
    delivery_tag: int


def connection_parameters(mq: MQSettings, name: str) -> pika.ConnectionParameters:
    """pika parameters from mq.cfg; ``name`` shows in the broker's connection list."""
    ssl_options = None
    if mq.ssl:
        ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=mq.host)
    return pika.ConnectionParameters(
        host=mq.host, port=mq.port, virtual_host=mq.vhost,
        credentials=pika.PlainCredentials(mq.user, mq.password.reveal()),
        ssl_options=ssl_options, heartbeat=mq.heartbeat,
        client_properties={"connection_name": name},
        connection_attempts=1, socket_timeout=CONNECT_TIMEOUT_S, stack_timeout=CONNECT_TIMEOUT_S,
        # a broker blocking publishers (disk or memory alarm) for this long counts as a lost connection
        blocked_connection_timeout=max(60, 2 * mq.heartbeat))


class AmqpTransport(Transport):
    """RabbitMQ behind the ``Transport`` contract. Opening it does no I/O; the first call connects."""

    def __init__(self, mq: MQSettings, *, client_name: str = ""):
        self.mq = mq
        self.client_name = client_name or "enstratus-workers"
        self.dead_exchange = mq.exchange + ".dead"
        self._publisher: ConfirmingPublisher | None = None
        self._admin: pika.BlockingConnection | None = None
        self._channel = None
        self._consumers: list[AmqpConsumer] = []

    def queue_name(self, queue: str) -> str:
        return self.mq.queue_prefix + queue

    def dead_queue_name(self, queue: str) -> str:
        return self.mq.queue_prefix + queue + ".dead"

    def _params(self, role: str) -> pika.ConnectionParameters:
        return connection_parameters(self.mq, f"{self.client_name} {role}")

    # -- management: one blocking connection, reopened once if it went stale -----------------

    def _manage(self, what: str, fn: Callable):
        """Run ``fn(channel)`` on the management connection, reconnecting once if it went stale
        (a blocking connection left idle misses heartbeats and is dropped by the broker)."""
        for attempt in (1, 2):
            fresh = self._admin is None
            try:
                if self._admin is None:
                    self._admin = pika.BlockingConnection(self._params("admin"))
                if self._channel is None or not self._channel.is_open:
                    self._channel = self._admin.channel()
                return fn(self._channel)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._channel = None
                raise TransportError(f"AMQP {what} refused by the broker: {exc.reply_code} {exc.reply_text}") from exc
            except _PIKA_ERRORS as exc:
                self._drop_admin()
                if fresh or attempt == 2:
                    raise ConnectionClosed(f"AMQP {what} failed ({self.mq.host}:{self.mq.port}): {exc!r}") from exc
                log.info("AMQP management connection went stale (%r); reconnecting", exc)

    def _drop_admin(self) -> None:
        conn, self._admin, self._channel = self._admin, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except _PIKA_ERRORS:
                pass

    def declare(self, queues: Sequence[str]) -> None:
        def run(ch):
            ch.exchange_declare(self.mq.exchange, "direct", durable=True)
            ch.exchange_declare(self.dead_exchange, "direct", durable=True)
            kind = {"x-queue-type": self.mq.queue_type}
            for q in queues:
                ch.queue_declare(self.dead_queue_name(q), durable=True, arguments=kind)
                ch.queue_bind(self.dead_queue_name(q), self.dead_exchange, routing_key=q)
                ch.queue_declare(self.queue_name(q), durable=True,
                                 arguments={**kind, "x-dead-letter-exchange": self.dead_exchange})
                ch.queue_bind(self.queue_name(q), self.mq.exchange, routing_key=q)
        self._manage("declare", run)

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        def count(ch, name):
            try:
                return ch.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                self._channel = self._admin.channel()  # a missing queue closes the channel
                return None

        def run(_ch):
            out = []
            for q in queues:
                main, dead = count(self._channel, self.queue_name(q)), count(self._channel, self.dead_queue_name(q))
                out.append(QueueDepth(queue=q, ready=main.message_count if main else 0, unacked=None,
                                      consumers=main.consumer_count if main else 0,
                                      dead=dead.message_count if dead else 0))
            return out
        return self._manage("depths", run)

    def ping(self) -> None:
        # a passive declare of a built-in exchange: a round trip that cannot fail on a live broker
        self._manage("ping", lambda ch: ch.exchange_declare("amq.direct", passive=True))

    # -- publishing --------------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        if self._publisher is None or not self._publisher.alive:
            self._close_publisher()
            publisher = ConfirmingPublisher(self._params("publisher"), [self.mq.exchange, self.dead_exchange],
                                            window=self.mq.confirm_window)
            publisher.start(CONNECT_TIMEOUT_S)
            self._publisher = publisher
        exchange, props = self.mq.exchange, pika.BasicProperties
        self._publisher.publish([
            (exchange, m.queue, m.body,
             props(delivery_mode=2, content_type="application/json", message_id=m.message_id,
                   headers=m.headers or None),
             m.message_id)
            for m in messages])

    def _close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    # -- consuming ---------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], prefetch: int) -> "AmqpConsumer":
        consumer = AmqpConsumer(self, list(queues), prefetch)
        self._consumers = [c for c in self._consumers if not c.closed] + [consumer]
        return consumer

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []
        self._close_publisher()
        self._drop_admin()


class AmqpConsumer(Consumer):
    """``basic_consume`` with manual acks on a ``BlockingConnection`` of its own.

    pika is not thread-safe: settlement from another thread is queued with
    ``add_callback_threadsafe`` and runs on the polling thread during its next ``poll`` (or in
    ``close``, which flushes it first). ``close`` belongs to the polling thread too.
    """

    def __init__(self, transport: AmqpTransport, queues: list[str], prefetch: int):
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.closed = False
        self._session = object()
        self._buffer: list[Delivery] = []
        self._outstanding: dict[int, None] = {}   # delivered, unsettled tags in delivery order
        self._owner = threading.get_ident()       # the polling thread, once poll runs
        try:
            self._conn = pika.BlockingConnection(transport._params("consumer"))
        except _PIKA_ERRORS as exc:
            raise ConnectionClosed(f"AMQP consumer cannot connect: {exc!r}") from exc
        try:
            self._channel = self._conn.channel()
            # per-consumer prefetch (global QoS is unsupported by quorum queues): split the bound
            # across the queues so the channel never holds more than `prefetch` unsettled
            share, extra = divmod(prefetch, len(queues))
            for i, q in enumerate(queues):
                self._channel.basic_qos(prefetch_count=max(1, share + (i < extra)))
                self._channel.basic_consume(transport.queue_name(q),
                                            functools.partial(self._on_message, q), auto_ack=False)
        except _PIKA_ERRORS as exc:
            self._close_quietly()
            raise ConnectionClosed(f"AMQP consumer cannot consume {queues}: {exc!r}") from exc

    def _on_message(self, queue, _channel, method, properties, body) -> None:
        self._outstanding[method.delivery_tag] = None
        self._buffer.append(Delivery(queue=queue, body=body, message_id=properties.message_id,
                                     redelivered=bool(method.redelivered),
                                     tag=AmqpTag(self._session, method.delivery_tag),
                                     headers=dict(properties.headers or {})))

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
        except _PIKA_ERRORS as exc:
            self._close_quietly()
            raise ConnectionClosed(f"AMQP consumer connection lost: {exc!r}") from exc
        out, self._buffer[:limit] = self._buffer[:limit], []
        return out

    def _submit(self, fn: Callable[[], None]) -> None:
        if self.closed:
            return  # the broker has given them back already
        if threading.get_ident() == self._owner:
            try:
                fn()
            except _PIKA_ERRORS as exc:
                log.warning("AMQP settlement lost with the connection (%r); the broker redelivers", exc)
            return
        try:
            self._conn.add_callback_threadsafe(fn)
        except _PIKA_ERRORS as exc:
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
            # requeue=False: the queue's dead-letter exchange routes it to the .dead queue
            self._submit(functools.partial(self._settle, tags,
                                           lambda t, _m: self._channel.basic_reject(t, requeue=False)))

    def close(self) -> None:
        """Run settlements queued by other threads, then close: the broker requeues the rest."""
        if self.closed:
            return
        try:
            if self._conn.is_open:
                self._conn.process_data_events(time_limit=0)
        except _PIKA_ERRORS as exc:
            log.info("AMQP consumer connection already gone at close: %r", exc)
        self._close_quietly()

    def _close_quietly(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._outstanding.clear()
        try:
            if self._conn.is_open:
                self._conn.close()
        except _PIKA_ERRORS:
            pass
