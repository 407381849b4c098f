"""One queue connection held by a daemon and shared by its threads: the admin daemon's request
threads, the pinger's health rounds and retention's purges of old dead letters.

A ``Transport`` is not to be shared between threads, and the admin answers requests from a
thread pool; opening a connection per request would cost a RabbitMQ handshake every few seconds
per open page, and one per health round (every ``pinger.heartbeat_interval``) would churn the
broker's connections (and its log) for as long as the service runs. So one transport is kept
behind a lock, opened on first use, and dropped after any error so that the next call reconnects
(the broker may have restarted meanwhile). With ``max_age_s`` it is also let go once it is that
old: a health check that finds none held checks on a new connection (``open_new``), which proves
that a new client still gets in, and hands it over to be held (``adopt``). With ``idle_s`` it is
closed once it has not been used for that long: a blocking connection left alone sends no
heartbeats, and the broker would drop it (logging a client that missed its heartbeats) when
the next call would have had to reconnect anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from . import NodeState, QueueDepth, Transport, open_transport

log = logging.getLogger(__name__)

#: the age at which the daemons let their held connection go, so that their next health check
#: connects anew: a connection held for months would say nothing of whether a new one gets in
HELD_FOR_S = 600.0


def idle_limit(mq) -> float | None:
    """How long a held AMQP connection may go unused before it is closed: one and a half
    heartbeat intervals, under the two after which the broker drops a silent client, and over
    one, so a caller coming once a heartbeat interval (a scrape a minute) keeps its connection;
    no limit with heartbeats off (0)."""
    return 1.5 * mq.heartbeat if mq.heartbeat else None


class SharedTransport:
    """``declare``, ``depths``, ``ping``, ``node_states``, ``purge_dead`` and
    ``purge_dead_before`` over one lazily opened, lock-guarded transport.

    ``opener`` returns a new ``Transport`` (default: the configured one, labelled
    ``client_name`` on the broker). Calls raise the transport's ``TransportError``s; the admin
    turns them into 503 answers.
    """

    def __init__(self, settings, layout, *, opener: Callable[[], Transport] | None = None,
                 client_name: str = "admin", max_age_s: float | None = None, idle_s: float | None = None):
        self._opener = opener or (lambda: open_transport(settings.mq, layout, client_name=client_name))
        self._lock = threading.Lock()
        self._transport: Transport | None = None
        self._opened_at = self._used_at = 0.0
        self.max_age_s, self.idle_s = max_age_s, idle_s

    def _expire(self) -> None:
        if self._transport is None:
            return
        now = time.monotonic()
        if (self.max_age_s is not None and now - self._opened_at >= self.max_age_s) or \
                (self.idle_s is not None and now - self._used_at >= self.idle_s):
            self._drop()

    @property
    def holding(self) -> bool:
        """Whether a transport is held now (one past ``max_age_s`` or ``idle_s`` is let go here)."""
        with self._lock:
            self._expire()
            return self._transport is not None

    def open_new(self) -> Transport:
        """A new transport as this one opens them, for the caller to use and close or ``adopt``."""
        return self._opener()

    def adopt(self, transport: Transport) -> None:
        """Hold ``transport`` (one of ``open_new``'s, just seen to work) from now on; if another
        thread opened one meanwhile, that one is kept and ``transport`` closed."""
        with self._lock:
            if self._transport is None:
                self._transport, self._opened_at = transport, time.monotonic()
                self._used_at = self._opened_at
                return
        _close_quietly(transport)

    def _call(self, fn):
        with self._lock:
            self._expire()
            if self._transport is None:
                self._transport = self._opener()
                self._opened_at = time.monotonic()
            try:
                return fn(self._transport)
            except Exception:
                self._drop()
                raise
            finally:
                self._used_at = time.monotonic()

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

    def purge_dead_before(self, queue: str, before_ms: int) -> int:
        """Delete the dead letters of ``queue`` that died before ``before_ms`` (retention's)."""
        return self._call(lambda t: t.purge_dead_before(queue, before_ms))

    def ping(self) -> None:
        self._call(lambda t: t.ping())

    def node_states(self) -> list[NodeState]:
        """Each broker node probed on a connection of its own (``Transport.node_states``): the
        held connection says nothing of the nodes it is not on."""
        return self._call(lambda t: t.node_states())

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            _close_quietly(transport)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _close_quietly(transport: Transport) -> None:
    try:
        transport.close()
    except Exception:  # a broken connection: nothing left to save
        log.debug("closing the shared transport failed", exc_info=True)


def held_by_daemon(settings, layout, client_name: str) -> SharedTransport:
    """The transport a daemon holds for its rounds and pages (the pinger's, the admin's): made
    anew every ``HELD_FOR_S``, closed when left idle past ``idle_limit``."""
    return SharedTransport(settings, layout, client_name=client_name, max_age_s=HELD_FOR_S,
                           idle_s=idle_limit(settings.mq))
