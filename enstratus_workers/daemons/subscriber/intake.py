"""The subscriber's intake thread: the only thread that touches the queue consumer's connection.

It polls the transport, hands deliveries to the main loop through a queue plus a wake-up pipe,
and reconnects with backoff (jittered, so a fleet of subscribers that lost the same broker does
not come back in step) when the broker goes away. Settling (ack/nack/dead-letter) is
called from the main loop; the Consumer contract makes that thread-safe.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

from enstratus_workers.backoff import Backoff, Retrying
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.jobs import pathtrace
from enstratus_workers.mq import open_transport

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = Backoff(first=0.5, cap=30.0, jitter="equal")
#: A consumer's connection must last this long for the reconnect delays to start over.
STABLE_AFTER_S = 30.0


class Intake:
    def __init__(self, mq_settings, layout, queues, prefetch: int, wake_fd: int, client_name: str):
        self.mq_settings, self.layout = mq_settings, layout
        self.queues, self.prefetch = list(queues), prefetch
        self.client_name = client_name
        self.deliveries: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_fd = wake_fd
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._settle_failed = threading.Event()   # set by a failed ack/nack: reopen the consumer
        self._consumer = None
        self._transport = None
        self.connected = threading.Event()
        self.reconnects = 0
        self.held = 0                      # deliveries taken while paused, left unsettled
        self._wanted = list(self.queues)   # set_queues changes it; the thread follows
        self.thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def set_queues(self, queues) -> None:
        """Consume these queues from now on (the consumer is reopened on the intake thread)."""
        self._wanted = list(queues)

    def pause(self) -> None:
        """Stop taking work: anything delivered from now on is held unsettled and goes back to
        its queue when the consumer closes (a nack would have the broker hand it straight back,
        over and over, for the whole grace period)."""
        self._paused.set()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():   # never started when the subscriber failed before it: the
            self.thread.join(timeout=10)   # start's own error is the one to report, not join's

    # settling, from the main loop and the recorder's thread
    # The intake thread may drop the consumer (reconnect) at any moment: read it once.
    # A settlement that fails (the embedded queue's file locked past its timeout, a full disk)
    # must not end the thread that asked for it: the consumer is reopened instead, which gives
    # its unsettled messages back, and each is recognised as recorded on redelivery and acked
    # unrun (the Consumer contract: a lost settlement means a redelivery).
    def ack(self, deliveries) -> None:
        consumer = self._consumer
        if deliveries and consumer is not None:
            self._settle("ack", consumer.ack, deliveries)

    def nack(self, deliveries) -> None:
        consumer = self._consumer
        if deliveries and consumer is not None:
            self._settle("nack", consumer.nack, deliveries)

    def dead_letter(self, delivery, reason: str) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._settle("dead-letter", consumer.dead_letter, delivery, reason)

    def _settle(self, what: str, settle, *args) -> None:
        try:
            settle(*args)
        except ConnectionClosed as exc:
            log.warning("could not %s on the queue (%s); reopening the consumer, whose unsettled "
                        "messages come back", what, exc)
            self._settle_failed.set()

    def _run(self) -> None:
        retry = Retrying(RECONNECT_BACKOFF, stable_after=STABLE_AFTER_S)
        while not self._stop.is_set():
            try:
                self._connect()
                retry.succeeded()
                self._poll_until_stopped()
            except ConnectionClosed as exc:
                self.connected.clear()
                self.reconnects += 1
                delay = retry.failed()
                log.warning("queue connection lost (%s); reconnecting in %.1fs", exc, delay)
                self._close()
                self._stop.wait(delay)
            except Exception:
                self.connected.clear()
                delay = retry.failed()
                log.exception("intake failed; restarting it in %.1fs", delay)
                self._close()
                self._stop.wait(delay)
        self._close()

    def _connect(self) -> None:
        self.queues = list(self._wanted)
        while not self.queues and not self._stop.is_set():   # nothing to consume (all disabled)
            self._stop.wait(0.5)
            self.queues = list(self._wanted)
        if self._stop.is_set():
            return
        self._transport = open_transport(self.mq_settings, self.layout, client_name=self.client_name)
        self._transport.declare(self.queues)
        self._consumer = self._transport.consumer(self.queues, self.prefetch)
        self.connected.set()
        log.info("consuming %s (prefetch %d)", ", ".join(self.queues), self.prefetch)

    def _poll_until_stopped(self) -> None:
        while not self._stop.is_set():
            if self._settle_failed.is_set():
                self._settle_failed.clear()
                raise ConnectionClosed("a settlement failed")
            if self._wanted != self.queues:
                # Unsettled deliveries of the old consumer go back to their queues on close;
                # any of them recorded meanwhile is recognised on redelivery and acked unrun.
                log.info("queues changed to %s; reopening the consumer", ", ".join(self._wanted) or "none")
                self._close()
                return
            if self._consumer is None:
                return
            got = self._consumer.poll(0.1, self.prefetch)
            if not got:
                continue
            if self._paused.is_set():
                self.held += len(got)   # unsettled: back to the queue when the consumer closes
                continue
            if pathtrace.on():
                pathtrace.stamp("intake.received", (_job_id(d) for d in got))
            self.deliveries.put(got)
            try:
                os.write(self._wake_fd, b"d")
            except (BlockingIOError, OSError):
                pass

    def _close(self) -> None:
        for thing in (self._consumer, self._transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    log.debug("error while closing", exc_info=True)
        self._consumer = self._transport = None


def _job_id(delivery) -> int:
    """The job a delivery points at (its message id), 0 if it names none (for the trace only)."""
    try:
        return int(delivery.message_id)
    except (TypeError, ValueError):
        return 0
