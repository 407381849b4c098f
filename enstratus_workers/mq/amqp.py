"""The AMQP transport (RabbitMQ through pika): the only modules that import pika are this one and
its ``amqp_*.py`` helpers, and pika's exceptions stop there, turned into ``ConnectionClosed``.

Broker layout, all durable: actions go to the direct exchange ``mq.exchange``; logical queue ``q``
is the queue ``mq.queue_prefix + q`` bound with routing key ``q`` and declared with
``x-dead-letter-exchange = mq.exchange + ".dead"``, so a rejected message is routed (by the broker,
with its original routing key) to ``mq.queue_prefix + q + ".dead"``. Delayed messages wait in
per-delay queues that expire them into ``q`` (``amqp_delay.py``); dead letters are listed and
re-driven by ``amqp_dead.py``.

Connections: publishing uses a confirm-mode ``SelectConnection`` in its own thread
(``amqp_publisher``); declare / depths / ping / delay-queue declares share one
``BlockingConnection``, on which each dead-letter operation opens a channel of its own; each
consumer (``amqp_consumer``) has its own ``BlockingConnection``. After ``ConnectionClosed`` the transport reconnects lazily on the
next call; a consumer does not (its deliveries are void once its connection is gone): open a new one.

Imports go one way: this module imports its helpers and hands each what it needs (parameters,
queue names, a channel runner); the helpers share ``amqp_common`` and never import this module.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import pika
import pika.exceptions

from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConnectionClosed, PublishError, TransportError
from enstratus_workers.mq.amqp_common import CONNECT_TIMEOUT_S, NOT_FOUND, PIKA_ERRORS, connection_parameters
from enstratus_workers.mq.amqp_consumer import AmqpConsumer, AmqpTag
from enstratus_workers.mq.amqp_dead import AmqpDeadLetters
from enstratus_workers.mq.amqp_delay import DelayQueues, delay_bucket
from enstratus_workers.mq.amqp_publisher import ConfirmingPublisher
from enstratus_workers.mq.base import DeadLetter, OutgoingMessage, QueueDepth, Transport

__all__ = ["AmqpConsumer", "AmqpTag", "AmqpTransport", "connection_parameters"]

log = logging.getLogger(__name__)


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
        self._delays = DelayQueues(mq.queue_prefix, mq.exchange, mq.queue_type, self._manage, self._reopen_channel)
        self._dead = AmqpDeadLetters(self.dead_queue_name, self._with_channel, self.publish)

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
            except PIKA_ERRORS as exc:
                self._drop_admin()
                if fresh or attempt == 2:
                    raise ConnectionClosed(f"AMQP {what} failed ({self.mq.host}:{self.mq.port}): {exc!r}") from exc
                log.info("AMQP management connection went stale (%r); reconnecting", exc)

    def _reopen_channel(self):
        """A fresh management channel, after the broker closed the last one (e.g. a 404)."""
        self._channel = self._admin.channel()
        return self._channel

    def _with_channel(self, what: str, fn: Callable):
        """Run ``fn(channel)`` on a channel of its own on the management connection, then close
        that channel: whatever it got and did not ack goes back to its queue, in place."""
        def run(_shared):
            channel = self._admin.channel()
            try:
                result = fn(channel)
            except BaseException:
                if channel.is_open:
                    try:
                        channel.close()
                    except PIKA_ERRORS:
                        pass
                raise
            if channel.is_open:
                channel.close()  # a round trip: the broker has processed our acks when it returns
            return result
        return self._manage(what, run)

    def _drop_admin(self) -> None:
        conn, self._admin, self._channel = self._admin, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except PIKA_ERRORS:
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
        """Immediate messages go to ``mq.exchange``; delayed ones to their delay queue through the
        default exchange (declared first, if need be). Both under the same confirms."""
        if not messages:
            return
        buckets = {id(m): delay_bucket(m.delay_ms) for m in messages if m.delay_ms > 0}
        missing = self._delays.prepare({(m.queue, buckets[id(m)]) for m in messages if id(m) in buckets})
        refused = [m.message_id for m in messages if id(m) in buckets and m.queue in missing]
        routed = [m for m in messages if not (id(m) in buckets and m.queue in missing)]
        try:
            if routed:
                self._publish(routed, buckets)
        except PublishError as exc:
            self._delays.forget()  # a delay queue deleted behind our back is declared again
            raise PublishError(str(exc), [*exc.unconfirmed, *refused]) from exc
        if refused:
            raise PublishError(f"{len(refused)} delayed message(s) for undeclared queue(s) {sorted(missing)}",
                               refused)

    def _publish(self, messages: Sequence[OutgoingMessage], buckets: dict[int, int]) -> None:
        if self._publisher is None or not self._publisher.alive:
            self._close_publisher()
            publisher = ConfirmingPublisher(self._params("publisher"), [self.mq.exchange, self.dead_exchange],
                                            window=self.mq.confirm_window)
            publisher.start(CONNECT_TIMEOUT_S)
            self._publisher = publisher
        props = pika.BasicProperties
        self._publisher.publish([
            (*self._route(m, buckets), m.body,
             props(delivery_mode=2, content_type="application/json", message_id=m.message_id,
                   headers=m.headers or None),
             m.message_id)
            for m in messages])

    def _route(self, m: OutgoingMessage, buckets: dict[int, int]) -> tuple[str, str]:
        """(exchange, routing key): the delay queue, by name through the default exchange, or the queue."""
        if id(m) in buckets:
            return "", self._delays.name(m.queue, buckets[id(m)])
        return self.mq.exchange, m.queue

    def _close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    # -- dead letters (amqp_dead.py) ----------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self._dead.list(queue, limit)

    def redrive(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        moved = self._dead.redrive(queue, message_ids)
        if moved:
            log.info("redrove %d dead letter(s) back to queue %s", moved, queue)
        return moved

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        purged = self._dead.purge(queue, message_ids)
        if purged:
            log.warning("purged %d dead letter(s) of queue %s", purged, queue)
        return purged

    # -- consuming ---------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], prefetch: int) -> AmqpConsumer:
        consumer = AmqpConsumer(self._params("consumer"), [(q, self.queue_name(q)) for q in queues], prefetch,
                                dead_exchange=self.dead_exchange)
        self._consumers = [c for c in self._consumers if not c.closed] + [consumer]
        return consumer

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []
        self._close_publisher()
        self._drop_admin()
