"""Dead letters on RabbitMQ: reading, re-driving and purging ``prefix + q + ".dead"``.

AMQP has no "peek": listing takes messages with ``basic.get`` (no auto-ack) on a channel of its
own and then closes that channel, which hands every one of them back in place. While a listing,
redrive or purge holds messages, another one does not see them.

A redrive takes a batch the same way, publishes copies to the queue through the transport's
confirming publisher, and acks (removes) a dead letter only once its copy is confirmed; closing
the channel then returns the ones that were not moved. At least once: a connection lost between
confirm and ack leaves a message in both queues.

Why a message died: ``Consumer.dead_letter`` publishes a confirmed copy to the dead exchange with
our ``x-error`` (the reason) and ``x-dead-at-ms`` headers and then acks the original (see
``amqp_consumer.py``); what the broker dead-lettered by itself (a ``basic.reject``, a quorum queue's
delivery limit) carries only the broker's ``x-death`` record, whose reason and time are used.

On quorum queues each ``basic.get`` counts as a delivery: on a broker that puts a delivery limit on
the dead-letter queues (a policy, or RabbitMQ 4's default of 20), listing them often can make the
broker drop them. Keep dead-letter queues free of delivery limits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, Sequence

import pika.exceptions

from enstratus_workers.errors import PublishError
from enstratus_workers.mq.amqp_common import DEAD_AT_HEADER, ERROR_HEADER, NOT_FOUND, own_headers
from enstratus_workers.mq.base import DeadLetter, OutgoingMessage

log = logging.getLogger(__name__)

GET_BATCH = 500            # dead letters republished per confirm round in a redrive


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def reason_and_time(headers: dict | None) -> tuple[str | None, int | None]:
    """Our ``x-error`` / ``x-dead-at-ms`` where set, else the newest ``x-death`` record's."""
    headers = headers or {}
    reason, dead_at = _text(headers.get(ERROR_HEADER)), headers.get(DEAD_AT_HEADER)
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):
        newest = deaths[0]
        reason = reason or _text(newest.get("reason"))
        if dead_at is None and isinstance(newest.get("time"), datetime):
            dead_at = int(newest["time"].timestamp() * 1000)
    try:
        return reason, None if dead_at is None else int(dead_at)
    except (TypeError, ValueError):   # a header set by another tool: no time rather than no listing
        return reason, None


class AmqpDeadLetters:
    """The dead-letter operations of the AMQP transport, each on a channel of its own.

    Handed what it uses by the transport: ``dead_queue_name(q)``, ``with_channel(what, fn)``
    (runs ``fn`` on a fresh channel that is closed afterwards, handing back what it did not ack;
    pika's errors come out as ``ConnectionClosed``) and ``publish(messages)`` (confirmed, or
    ``PublishError``).
    """

    def __init__(self, dead_queue_name: Callable[[str], str], with_channel: Callable,
                 publish: Callable[[Sequence[OutgoingMessage]], None]):
        self._dead_queue_name = dead_queue_name
        self._with_channel = with_channel
        self._publish = publish

    def _batches(self, channel, queue: str, limit: int | None = None):
        """Yield lists of up to ``GET_BATCH`` ``(tag, properties, body)`` taken with ``basic.get``.

        Stops when the queue has nothing ready, after ``limit`` messages, or after as many as the
        queue held at the first get: what is dead-lettered meanwhile (even a redriven message a
        consumer killed again at once) waits for the next call, so a call always ends. (The first
        get's count is the queue leader's own; a passive declare's may lag behind on a quorum
        queue.) A dead-letter queue that does not exist yields nothing.
        """
        name, budget, batch = self._dead_queue_name(queue), None, []
        while budget is None or budget > 0:
            try:
                method, properties, body = channel.basic_get(name, auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                return
            if method is None:
                break
            budget = (method.message_count + 1 if budget is None else budget) - 1
            if limit is not None:
                budget = min(budget, limit - 1)
                limit -= 1
            batch.append((method.delivery_tag, properties, body))
            if len(batch) >= GET_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def list(self, queue: str, limit: int) -> list[DeadLetter]:
        def run(channel):
            out = []
            for batch in self._batches(channel, queue, limit):
                for _tag, properties, body in batch:
                    reason, dead_at = reason_and_time(properties.headers)
                    out.append(DeadLetter(queue=queue, message_id=properties.message_id, body=body,
                                          headers=own_headers(properties.headers), reason=reason,
                                          dead_at_ms=dead_at))
            return out  # closing the channel hands them all back
        if limit <= 0:
            return []
        return self._with_channel("list dead letters", run)

    def redrive(self, queue: str, message_ids: Sequence[str] | None) -> int:
        wanted = None if message_ids is None else set(message_ids)
        if wanted is not None and not wanted:
            return 0

        def run(channel):
            moved = 0
            for got in self._batches(channel, queue):
                batch = [(tag, OutgoingMessage(queue, body, properties.message_id, own_headers(properties.headers)))
                         for tag, properties, body in got if wanted is None or properties.message_id in wanted]
                if not batch:
                    continue
                try:
                    self._publish([message for _, message in batch])
                except PublishError as exc:
                    failed = set(exc.unconfirmed)
                    done = [tag for tag, message in batch if message.message_id not in failed]
                    self._ack(channel, done)
                    raise PublishError(f"redrive of {queue}: {len(done) + moved} moved, {exc}",
                                       exc.unconfirmed) from exc
                self._ack(channel, [tag for tag, _ in batch])
                moved += len(batch)
            return moved
        return self._with_channel("redrive", run)

    def purge(self, queue: str, message_ids: Sequence[str] | None) -> int:
        if message_ids is None:
            def purge_all(channel):
                try:
                    return channel.queue_purge(self._dead_queue_name(queue)).method.message_count
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != NOT_FOUND:
                        raise
                    return 0
            return self._with_channel("purge dead letters", purge_all)
        wanted = set(message_ids)
        if not wanted:
            return 0

        def run(channel):
            purged = 0
            for got in self._batches(channel, queue):
                tags = [tag for tag, properties, _ in got if properties.message_id in wanted]
                self._ack(channel, tags)
                purged += len(tags)
            return purged
        return self._with_channel("purge dead letters", run)

    def purge_before(self, queue: str, before_ms: int) -> int:
        """Dead letters arrive in the order they died: the scan stops at the first one that
        died at or after ``before_ms`` (it and the rest are handed back when the channel
        closes), so a pass over a queue whose letters are all young reads one message."""
        def run(channel):
            purged = 0
            for got in self._batches(channel, queue):
                tags, young = [], False
                for tag, properties, _body in got:
                    _reason, dead_at = reason_and_time(properties.headers)
                    if dead_at is not None and dead_at >= before_ms:
                        young = True
                        break
                    if dead_at is not None:
                        tags.append(tag)
                self._ack(channel, tags)
                purged += len(tags)
                if young:
                    break
            return purged
        return self._with_channel("purge old dead letters", run)

    @staticmethod
    def _ack(channel, tags: list[int]) -> None:
        # single acks: the messages left out lie between them. The channel's close (a round
        # trip) is what tells us the broker has processed them.
        for tag in tags:
            channel.basic_ack(tag)
