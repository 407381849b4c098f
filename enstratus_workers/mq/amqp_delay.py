"""Broker-held delays on RabbitMQ without a plug-in: one delay queue per (logical queue, delay).

A delayed message for logical queue ``q`` is published (through the default exchange, with
confirms like any other) to the durable queue ``prefix + q + ".delay." + str(ms)``, declared with
``x-message-ttl = ms``, ``x-dead-letter-exchange = mq.exchange`` and
``x-dead-letter-routing-key = q``: the broker expires it after ``ms`` and routes it to ``q``. Every
message of a delay queue has the same TTL, so the queue's head is always the next to expire (a
per-message TTL would let a long delay at the head hold back shorter ones behind it).

Delays are rounded *up* to the Renard R10 ladder (1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8 times a
power of ten, in ms): at most 28 % later than asked, never sooner, and at most ten delay queues a
decade per logical queue, however the retry backoff is computed.

Unused delay queues: a classic one carries ``x-expires = 2 * ms + 60 s`` and is re-declared (which
renews that lease) at least every ``REDECLARE_S`` while it is published to, so it outlives every
message in it and disappears a minute or so after the last one left. Quorum queues do not renew
the lease on re-declaration (a probe against 3.10 saw a quorum queue expire, with its message,
while being re-declared every second), so a quorum delay queue has no ``x-expires`` and stays;
it dead-letters ``at-least-once`` instead (which needs ``x-overflow = reject-publish``), so a
message is not lost when its target queue is briefly unavailable. Quorum delay queues need
RabbitMQ 3.10 or later (message TTL on quorum queues).
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Callable, Iterable

import pika.exceptions

from enstratus_workers.mq.amqp_common import NOT_FOUND
from enstratus_workers.mq.base import MAX_DELAY_MS

log = logging.getLogger(__name__)

REDECLARE_S = 30.0         # under the 60 s margin of x-expires beyond the longest message stay
EXPIRES_MARGIN_MS = 60_000

_R10 = (100, 125, 160, 200, 250, 315, 400, 500, 630, 800)   # the R10 numbers, times 100


def _ladder() -> tuple[int, ...]:
    steps = {max(1, r * 10**e // 100) for e in range(10) for r in _R10}
    return tuple(sorted(ms for ms in steps if ms < MAX_DELAY_MS)) + (MAX_DELAY_MS,)


LADDER = _ladder()


def delay_bucket(delay_ms: int) -> int:
    """The delay a message asking for ``delay_ms`` gets: the smallest ladder step not below it."""
    if delay_ms <= 0:
        return 0
    return LADDER[min(bisect.bisect_left(LADDER, delay_ms), len(LADDER) - 1)]


def delay_queue_arguments(exchange: str, queue: str, bucket_ms: int, queue_type: str) -> dict:
    args = {"x-queue-type": queue_type, "x-message-ttl": bucket_ms,
            "x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": queue}
    if queue_type == "quorum":
        args.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    else:
        args["x-expires"] = 2 * bucket_ms + EXPIRES_MARGIN_MS
    return args


class DelayQueues:
    """Declares delay queues as publishing needs them and remembers when, per (queue, bucket).

    ``prepare`` runs on the transport's management channel (through ``manage``, which reconnects a
    stale connection); it also finds logical queues that were never declared, whose delayed
    messages must be refused as unroutable, as an immediate publish to them would be.
    """

    def __init__(self, prefix: str, exchange: str, queue_type: str, manage: Callable, reopen: Callable):
        self.prefix, self.exchange, self.queue_type = prefix, exchange, queue_type
        self._manage, self._reopen = manage, reopen
        self._declared: dict[tuple[str, int], float] = {}   # (queue, bucket) -> monotonic time

    def name(self, queue: str, bucket_ms: int) -> str:
        return f"{self.prefix}{queue}.delay.{bucket_ms}"

    def forget(self) -> None:
        """Re-declare everything on next use (after a publish came back unroutable)."""
        self._declared.clear()

    def prepare(self, pairs: Iterable[tuple[str, int]]) -> set[str]:
        """Make sure the delay queue of each (queue, bucket) exists and has a fresh lease.

        Returns the logical queues that do not exist (their delayed messages would be dropped).
        """
        now = time.monotonic()
        stale = sorted({p for p in pairs if now - self._declared.get(p, -REDECLARE_S) >= REDECLARE_S})
        if not stale:
            return set()

        def run(channel):
            missing = set()
            for queue in sorted({q for q, _ in stale}):
                try:
                    channel.queue_declare(self.prefix + queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != NOT_FOUND:
                        raise
                    missing.add(queue)
                    channel = self._reopen()  # a failed passive declare closes the channel
            for queue, bucket in stale:
                if queue in missing:
                    continue
                channel.queue_declare(self.name(queue, bucket), durable=True,
                                      arguments=delay_queue_arguments(self.exchange, queue, bucket,
                                                                      self.queue_type))
                self._declared[(queue, bucket)] = now
            return missing

        missing = self._manage("declare delay queues", run)
        if missing:
            log.warning("delayed message(s) for undeclared queue(s) %s refused", sorted(missing))
        return missing
