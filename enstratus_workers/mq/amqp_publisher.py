"""Pipelined publisher confirms over one pika ``SelectConnection`` whose ioloop runs in a thread.

pika's ``BlockingChannel`` in confirm mode waits for each message's confirm before the next
publish: one round trip (and one broker fsync) per message. Here up to ``window`` messages are in
flight at once, as in the raw-pika ceiling bench. The ioloop thread owns the connection: callers
hand it batches with ``add_callback_threadsafe`` and wait on the batch's event, and between batches
the thread keeps answering heartbeats, so a publisher idle for minutes stays connected.

A batch ends when every message was acked, nacked or returned, or when the connection drops. The
connection does not come back: a dead ``ConfirmingPublisher`` stays dead (``alive`` is False) and
its owner starts a new one.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from dataclasses import dataclass, field

import pika
import pika.exceptions
from pika import spec

from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.mq.amqp_common import why

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 15.0  # longest close() waits for the ioloop thread (a connect stuck in TCP)


@dataclass(eq=False)
class _Batch:
    """One ``publish`` call: the ioloop thread fills in the outcome, then sets ``done``."""

    items: list            # (exchange, routing_key, body, properties, message_id)
    sent: int = 0
    outstanding: int = 0
    confirmed: int = 0
    failed: list = field(default_factory=list)  # message ids nacked, returned or lost
    error: BaseException | None = None          # why the connection went away, if it did
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def settled(self) -> int:
        return self.confirmed + len(self.failed)


class ConfirmingPublisher:
    """A confirm-mode channel in its own ioloop thread; ``publish`` blocks until all are settled."""

    def __init__(self, parameters: pika.ConnectionParameters, exchanges: list[str], *,
                 window: int = 1000, stall_timeout: float = 60.0):
        self.parameters, self.exchanges = parameters, exchanges
        self.window = max(1, window)
        self.stall_timeout = stall_timeout  # no confirm progress for this long: give up the connection
        self._lock = threading.Lock()      # guards _stopped and _open (shared with callers)
        self._stopped = False
        self._open: set[_Batch] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # owned by the ioloop thread only
        self._conn = self._channel = None
        self._queue: collections.deque[_Batch] = collections.deque()
        self._inflight: dict[int, tuple[_Batch, str]] = {}   # delivery tag -> (batch, message_id)
        self._returned: set[int] = set()
        self._tag = 0

    # -- caller side -------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Connect, declare the exchanges and enter confirm mode; ``ConnectionClosed`` if not."""
        self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.close()
            raise ConnectionClosed(f"cannot connect: no connection after {timeout:.0f} s")
        if self._error is not None or not self.alive:
            self._thread.join()
            raise ConnectionClosed(f"cannot connect: {self.why_closed}") from self._error

    @property
    def alive(self) -> bool:
        with self._lock:
            return not self._stopped

    @property
    def why_closed(self) -> str:
        """Why the connection went, in a few words (once ``alive`` is False)."""
        return why(self._error) if self._error is not None else "closed"

    def publish(self, items: list) -> None:
        """Publish ``(exchange, routing_key, body, properties, message_id)`` tuples; wait for confirms."""
        batch = _Batch(items)
        with self._lock:
            if self._stopped:
                raise ConnectionClosed("AMQP publisher connection is closed")
            self._open.add(batch)
            self._conn.ioloop.add_callback_threadsafe(functools.partial(self._submit, batch))
        # a stall is one whole ``stall_timeout`` without a new confirm, counted from the publish
        seen = 0
        while not batch.done.wait(self.stall_timeout):
            if batch.settled == seen:
                log.error("no publisher confirm for %.0f s: dropping the connection", self.stall_timeout)
                self._call(self._close_connection)
                batch.done.wait()
                break
            seen = batch.settled
        if batch.error is not None and batch.confirmed == 0:
            raise ConnectionClosed(f"AMQP connection lost, nothing confirmed: {batch.error!r}") from batch.error
        if batch.failed:
            raise PublishError(f"{len(batch.failed)} of {len(items)} message(s) not confirmed"
                               + (f" (connection lost: {batch.error!r})" if batch.error else ""), batch.failed)

    def close(self) -> None:
        """Close the connection and wait for the ioloop thread to end. Idempotent."""
        self._call(self._close_connection)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("AMQP publisher thread did not stop within %.0f s", JOIN_TIMEOUT_S)

    def _call(self, fn) -> None:
        with self._lock:
            if not self._stopped and self._conn is not None:
                self._conn.ioloop.add_callback_threadsafe(fn)

    # -- ioloop thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = pika.SelectConnection(self.parameters, on_open_callback=self._on_open,
                                         on_open_error_callback=self._on_open_error,
                                         on_close_callback=self._on_closed)
        except Exception as exc:  # bad parameters: report, do not kill the thread silently
            self._error = exc
            with self._lock:
                self._stopped = True
            self._ready.set()
            return
        with self._lock:
            self._conn = conn
        try:
            conn.ioloop.start()
        finally:
            with self._lock:
                self._stopped = True
                stranded = list(self._open)
            for batch in stranded:  # submitted after the loop stopped running callbacks
                self._fail(batch, self._error or ConnectionClosed("publisher stopped"))
            conn.ioloop.close()
            self._ready.set()

    def _on_open(self, conn) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self._declare(list(self.exchanges))

    def _declare(self, exchanges: list[str], _frame=None) -> None:
        if exchanges:
            self._channel.exchange_declare(exchanges[0], "direct", durable=True,
                                           callback=functools.partial(self._declare, exchanges[1:]))
        else:
            self._channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._ready.set())

    def _on_open_error(self, conn, exc) -> None:
        self._error = exc
        conn.ioloop.stop()

    def _on_closed(self, conn, reason) -> None:
        self._error = self._error or reason
        for batch in list(self._queue) + [b for b, _ in self._inflight.values()]:
            self._fail(batch, reason)
        self._queue.clear()
        self._inflight.clear()
        conn.ioloop.stop()

    def _on_channel_closed(self, channel, reason) -> None:
        self._error = reason
        if not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            log.error("AMQP publisher channel closed by the broker: %s", reason)
        self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None and not (self._conn.is_closing or self._conn.is_closed):
            self._conn.close()

    def _submit(self, batch: _Batch) -> None:
        if self._channel is None or not self._channel.is_open:
            # the connection closed after this batch was handed over
            self._fail(batch, self._error or ConnectionClosed("AMQP publisher channel is closed"))
            return
        if not batch.items:
            self._finish(batch)
            return
        self._queue.append(batch)
        self._pump()

    def _pump(self) -> None:
        """Publish from the queued batches while fewer than ``window`` are unconfirmed."""
        channel, inflight = self._channel, self._inflight
        while self._queue and len(inflight) < self.window:
            batch = self._queue[0]
            exchange, key, body, props, message_id = batch.items[batch.sent]
            channel.basic_publish(exchange, key, body, props, mandatory=True)
            self._tag += 1
            inflight[self._tag] = (batch, message_id)
            batch.sent += 1
            batch.outstanding += 1
            if batch.sent == len(batch.items):
                self._queue.popleft()

    def _on_return(self, channel, method, properties, body) -> None:
        # basic.return precedes the basic.ack of the same message: mark the oldest match
        for tag, (_, message_id) in self._inflight.items():
            if message_id == properties.message_id and tag not in self._returned:
                self._returned.add(tag)
                break
        log.warning("message %s unroutable (%s %s): no queue bound to %r", properties.message_id,
                    method.reply_code, method.reply_text, method.routing_key)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        acked = isinstance(method, spec.Basic.Ack)
        if method.multiple:
            tags = []
            for tag in self._inflight:  # insertion order is tag order
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            entry = self._inflight.pop(tag, None)
            if entry is None:
                continue
            batch, message_id = entry
            batch.outstanding -= 1
            if acked and tag not in self._returned:
                batch.confirmed += 1
            else:
                self._returned.discard(tag)
                batch.failed.append(message_id)
            if batch.outstanding == 0 and batch.sent == len(batch.items):
                self._finish(batch)
        self._pump()

    def _fail(self, batch: _Batch, reason: BaseException) -> None:
        if batch.done.is_set():
            return
        batch.error = reason
        batch.failed.extend(message_id for b, message_id in self._inflight.values() if b is batch)
        batch.failed.extend(item[4] for item in batch.items[batch.sent:])
        self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        with self._lock:
            self._open.discard(batch)
        batch.done.set()
