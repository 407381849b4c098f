"""One queue connection for the whole admin daemon, shared by its request threads.

A ``Transport`` is not to be shared between threads, and the admin answers requests from a
thread pool; opening a connection per request would cost a RabbitMQ handshake every few seconds
per open page. So one transport is kept behind a lock, opened on first use, and dropped after any
error so that the next call reconnects (the broker may have restarted meanwhile).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from ..mq import QueueDepth, Transport, open_transport

log = logging.getLogger(__name__)


class SharedTransport:
    """``declare``, ``depths`` and ``purge_dead`` over one lazily opened, lock-guarded transport.

    ``opener`` returns a new ``Transport`` (default: the configured one). Calls raise the
    transport's ``TransportError``s; the caller turns them into 503 answers.
    """

    def __init__(self, settings, layout, *, opener: Callable[[], Transport] | None = None):
        self._opener = opener or (lambda: open_transport(settings.mq, layout, client_name="admin"))
        self._lock = threading.Lock()
        self._transport: Transport | None = None

    def _call(self, fn):
        with self._lock:
            if self._transport is None:
                self._transport = self._opener()
            try:
                return fn(self._transport)
            except Exception:
                self._drop()
                raise

    def declare(self, queues: Sequence[str]) -> None:
        self._call(lambda t: t.declare(list(queues)))

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Also a ``DepthsSource`` for ``Stat`` and the metrics collector."""
        if not queues:
            return []
        return self._call(lambda t: t.depths(list(queues)))

    __call__ = depths

    def purge_dead(self, queue: str, message_ids: Sequence[str]) -> int:
        """Drop these dead letters of ``queue`` (re-driven jobs': ``jobs/redrive.py``)."""
        return self._call(lambda t: t.purge_dead(queue, list(message_ids)))

    def ping(self) -> None:
        self._call(lambda t: t.ping())

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:  # a broken connection: nothing left to save
                log.debug("closing the admin transport failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._drop()
