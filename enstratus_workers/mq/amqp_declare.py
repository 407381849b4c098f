"""The AMQP transport's queues: per logical queue ``q``, a work queue and its dead-letter queue.

Both are durable and of ``mq.cfg``'s ``queue_type``. The work queue ``prefix + q`` is bound to
``mq.exchange`` with routing key ``q`` and dead-letters to ``mq.exchange + ".dead"``, which routes
(by the original routing key) to ``prefix + q + ".dead"``.

Quorum queues (``queue_type = quorum``, replicated over a cluster's nodes) dead-letter
*at-most-once* by default: a message the broker dead-letters while the dead-letter queue's leader
is away is dropped. So a quorum work queue is declared ``x-dead-letter-strategy = at-least-once``
(RabbitMQ 3.10+, which needs ``x-overflow = reject-publish`` with it; there is no length limit,
so it changes nothing else): the broker keeps the message until the dead-letter queue confirms
it. It matters less here than in the delay queues (``amqp_delay.py``, where every retry passes),
since ``Consumer.dead_letter`` copies with confirms and only falls back to a ``basic.reject``,
but it covers that fallback and a delivery limit an operator sets by policy.

A work queue an earlier version declared without those two arguments cannot be changed in place
(RabbitMQ refuses a re-declare with other arguments: 406): it is kept as it is, with a warning
saying how to get at-least-once (drain it, delete it, restart the publisher), rather than
stopping every daemon over it.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import pika.exceptions

from enstratus_workers.mq.amqp_common import PRECONDITION_FAILED

log = logging.getLogger(__name__)

AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def service_exchanges(exchange: str) -> tuple[str, ...]:
    """Every exchange a service on ``exchange`` (``mq.cfg``'s) declares on the broker: its work
    exchange, its dead letters' (``.dead``, here) and its publishers' rings (``.wake``,
    ``amqp_wake.py``). What removes a service's traces from a broker deletes these."""
    return exchange, exchange + ".dead", exchange + ".wake"


def work_queue_arguments(queue_type: str, dead_exchange: str) -> dict:
    args = {"x-queue-type": queue_type, "x-dead-letter-exchange": dead_exchange}
    if queue_type == "quorum":
        args.update(AT_LEAST_ONCE)
    return args


def dead_queue_arguments(queue_type: str) -> dict:
    return {"x-queue-type": queue_type}


class QueueLayout:
    """Declares the exchanges and the queues of logical queues, on a channel it is handed.

    ``reopen()`` gives a fresh channel after the broker closed one (as a refused declare does).
    """

    def __init__(self, exchange: str, queue_type: str, queue_name: Callable[[str], str],
                 dead_queue_name: Callable[[str], str], reopen: Callable):
        self.exchange, self.dead_exchange, self.queue_type = exchange, exchange + ".dead", queue_type
        self.queue_name, self.dead_queue_name = queue_name, dead_queue_name
        self._reopen = reopen

    def declare(self, channel, queues: Sequence[str]) -> None:
        channel.exchange_declare(self.exchange, "direct", durable=True)
        channel.exchange_declare(self.dead_exchange, "direct", durable=True)
        for q in queues:
            dead = self.dead_queue_name(q)
            channel.queue_declare(dead, durable=True, arguments=dead_queue_arguments(self.queue_type))
            channel.queue_bind(dead, self.dead_exchange, routing_key=q)
            channel = self._declare_work_queue(channel, self.queue_name(q))
            channel.queue_bind(self.queue_name(q), self.exchange, routing_key=q)

    def _declare_work_queue(self, channel, name: str):
        """Declare one work queue; returns the channel to go on with (a new one after a 406)."""
        args = work_queue_arguments(self.queue_type, self.dead_exchange)
        try:
            channel.queue_declare(name, durable=True, arguments=args)
            return channel
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED or not any(f"'{a}'" in exc.reply_text for a in AT_LEAST_ONCE):
                raise
        channel = self._reopen()
        earlier = {k: v for k, v in args.items() if k not in AT_LEAST_ONCE}
        channel.queue_declare(name, durable=True, arguments=earlier)
        log.warning("queue %s was declared by an earlier version, without at-least-once dead-lettering: kept "
                    "as it is (a message the broker dead-letters while the dead-letter queue is away is lost). "
                    "To change it: stop the publisher, let the subscribers drain it, delete it, start again",
                    name)
        return channel
