"""The transport contract: everything the publisher and subscriber know about a queue.

The daemons never import pika or sqlite3 for queueing; they get a ``Transport`` from
``enstratus_workers.mq.open_transport(settings.mq, layout)``. Each backend lives in its own module
(``embedded.py``, ``amqp.py``) and turns its library's exceptions into ``ConnectionClosed`` /
``PublishError`` from ``enstratus_workers.errors``.

Queue names here are *logical* (``default``, ``provisioner``); a backend maps them to its own
names (the AMQP backend prefixes them with ``mq.cfg``'s ``queue_prefix``). Every logical queue
``q`` has a dead-letter queue holding what was rejected from it.

Two things the broker holds for us, so that a crash of ours loses neither:

- *Delays*: a message published with ``delay_ms > 0`` becomes deliverable on its queue no sooner
  than that, and soon after (the AMQP backend rounds up to a ladder of delay buckets, at most 28 %
  later; see ``amqp_delay.py``). This is how retries back off.
- *Dead letters*: what ``Consumer.dead_letter`` put aside can be listed (without taking it out),
  moved back to its queue (``redrive``) or dropped (``purge_dead``), by message id or all at once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

MAX_DELAY_MS = 2**32 - 1   # the longest delay RabbitMQ's x-message-ttl can hold (~49.7 days)
MAX_REASON_CHARS = 2000    # a dead-letter reason is cut here: it travels in an AMQP header


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish: persistent, with ``message_id`` (the job id) as the broker's id.

    ``delay_ms > 0`` holds it back on the broker for that long before it can be delivered.
    """

    queue: str
    body: bytes
    message_id: str
    headers: dict = field(default_factory=dict)
    delay_ms: int = 0

    def __post_init__(self):
        if not isinstance(self.delay_ms, int) or not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be an int from 0 to {MAX_DELAY_MS}, not {self.delay_ms!r}")


@dataclass(frozen=True)
class Delivery:
    """A message taken off a queue and not yet settled (ack / nack / dead-letter)."""

    queue: str
    body: bytes
    message_id: str | None
    redelivered: bool
    tag: Any                      # backend-private handle used to settle it
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int                    # deliverable now (a delayed message counts once due)
    unacked: int | None           # delivered, not settled (None where the broker does not say)
    consumers: int | None
    dead: int                     # in the dead-letter queue
    delayed: int | None = None    # published with a delay not yet over (None: the broker does not say)


@dataclass(frozen=True)
class NodeState:
    """One node of a clustered backend as a probe found it: ``error`` None if it answered."""

    node: str                     # as configured: "host:port"
    error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A message in a dead-letter queue, as ``Transport.dead_letters`` lists it.

    ``headers`` are the message's own, as published: the broker's and our bookkeeping headers
    (``x-death``, ``x-error`` ...) are taken out and become ``reason`` and ``dead_at_ms``.
    ``reason`` is what ``Consumer.dead_letter`` was told, or the broker's word for it
    (``rejected``, ``expired``, ``delivery_limit``) where only the broker knows.
    ``dead_at_ms`` (ms since the epoch) is None where the backend did not record it.
    """

    queue: str
    message_id: str | None
    body: bytes
    headers: dict
    reason: str | None
    dead_at_ms: int | None


class Consumer(abc.ABC):
    """Deliveries from a set of queues, at most ``prefetch`` unsettled at a time.

    ``poll`` is called from one thread only. ``ack``/``nack``/``dead_letter`` may be called from
    any thread; a backend that is not thread-safe hands them to the polling thread.
    Settling a delivery from an earlier connection is a no-op (the broker redelivers it).
    """

    @abc.abstractmethod
    def poll(self, timeout: float, limit: int) -> list[Delivery]:
        """Wait up to ``timeout`` seconds for a delivery; return every one ready, at most ``limit``.

        Returns ``[]`` when idle. Raises ``ConnectionClosed`` when the connection is gone.
        """

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle as done: the messages leave the queue for good."""

    @abc.abstractmethod
    def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Give back unstarted work: the messages return to their queue for redelivery."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message that cannot be processed (e.g. undecodable) to its dead-letter queue,
        keeping ``reason`` (its first ``MAX_REASON_CHARS``) and the time for ``dead_letters``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop consuming; unsettled deliveries return to their queues."""


class Transport(abc.ABC):
    """A connection to the queue backend. Not shared between threads, except as Consumer says."""

    @abc.abstractmethod
    def declare(self, queues: Sequence[str]) -> None:
        """Create the queues (and their dead-letter queues) if missing. Idempotent."""

    @abc.abstractmethod
    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish persistently and return once every message is confirmed durable.

        Confirms are pipelined (many messages in flight at once), never one round trip each.
        Raises ``PublishError`` naming the unconfirmed message ids, ``ConnectionClosed`` if the
        connection dropped before anything was confirmed.
        """

    def publish_one(self, message: OutgoingMessage) -> None:
        """``publish([message])``, for a job published alone: a transport may do it on the
        calling thread, without the batch path's hand-offs (AMQP: ``mq/amqp.py``). Same outcomes."""
        self.publish([message])

    def keep_alive(self) -> None:
        """Answer the backend's heartbeats on what ``publish_one`` keeps open between calls;
        a publisher calls it on each turn of its loop. Never raises."""

    @abc.abstractmethod
    def consumer(self, queues: Sequence[str], prefetch: int) -> Consumer:
        """Start consuming the given logical queues."""

    @abc.abstractmethod
    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Current depth of each queue and of its dead-letter queue."""

    @abc.abstractmethod
    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``queue``, left where they are.

        ``[]`` for a queue that has none or was never declared. Listing twice gives the same
        messages, unless something settled them in between; a listing that runs while a
        ``redrive`` or ``purge_dead`` of the same queue does may miss the messages it holds.
        (On RabbitMQ a listing takes the messages and hands them back: a quorum queue's count
        in ``depths`` may lag a moment behind.)
        """

    @abc.abstractmethod
    def redrive(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Move the dead letters with these message ids (all of them for ``None``) back to ``queue``.

        Each is published again, as first published (same body, id and own headers, no delay,
        ``redelivered`` False, behind what is already waiting) and only taken out of the
        dead-letter queue once that publish is confirmed: at least once, so a crash in between
        leaves it in both. Returns how many moved; unknown ids are not an error (they count 0).
        Raises ``PublishError`` naming those that could not be published (they stay dead).
        """

    @abc.abstractmethod
    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Delete the dead letters with these message ids (all of them for ``None``) for good.

        Returns how many were deleted.
        """

    @abc.abstractmethod
    def purge_dead_before(self, queue: str, before_ms: int) -> int:
        """Delete the dead letters of ``queue`` that died before ``before_ms`` (epoch ms): what
        retention no longer keeps (``retention.dead``). One without a time of death is kept.
        Returns how many were deleted.
        """

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``ConnectionClosed`` unless the backend answers."""

    def node_states(self) -> list[NodeState]:
        """Each node of a clustered backend, probed (a connection of its own each, kept for the
        next call while the transport is open; at most a few seconds): which answer and why the
        others do not. ``[]`` for a backend that is not made of nodes (the embedded file):
        ``ping`` says all there is."""
        return []

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
