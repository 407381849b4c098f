"""The transport contract: everything the publisher and subscriber know about a queue.

The daemons never import pika or sqlite3 for queueing; they get a ``Transport`` from
``enstratus_workers.mq.open_transport(settings.mq, layout)``. Each backend lives in its own module
(``embedded.py``, ``amqp.py``) and turns its library's exceptions into ``ConnectionClosed`` /
``PublishError`` from ``enstratus_workers.errors``.

Queue names here are *logical* (``default``, ``provisioner``); a backend maps them to its own
names (the AMQP backend prefixes them with ``mq.cfg``'s ``queue_prefix``). Every logical queue
``q`` has a dead-letter queue holding what was rejected from it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish: persistent, with ``message_id`` (the job id) as the broker's id."""

    queue: str
    body: bytes
    message_id: str
    headers: dict = field(default_factory=dict)


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
    ready: int                    # waiting to be delivered
    unacked: int | None           # delivered, not settled (None where the broker does not say)
    consumers: int | None
    dead: int                     # in the dead-letter queue


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
        """Move a message that cannot be processed (e.g. undecodable) to its dead-letter queue."""

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

    @abc.abstractmethod
    def consumer(self, queues: Sequence[str], prefetch: int) -> Consumer:
        """Start consuming the given logical queues."""

    @abc.abstractmethod
    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Current depth of each queue and of its dead-letter queue."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``ConnectionClosed`` unless the backend answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
