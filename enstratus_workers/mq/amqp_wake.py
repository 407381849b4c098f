"""Wake-ups across hosts, through the broker: a commit on one host wakes the publishers on all.

The local bell (``jobs/wakeup.py``) reaches only the publishers of its own host. A job made
pending on a host whose publisher is down, or room made in a queue's window by a subscriber on a
host without one, would otherwise wait for another host's safety-net poll. So, on RabbitMQ:

- ``WakeRinger`` (in whoever makes jobs pending or records outcomes: attached to the store's
  ringer by ``ring_through_broker``) publishes a ring, a tiny transient message whose body is
  its host's name, to the fanout exchange ``<mq.exchange>.wake``. ``ring()`` only raises a flag;
  a thread sends the rings, up to ``BURST`` messages at once, then one per ``MIN_GAP_S``
  (20 ms) for all the rings meanwhile: a burst of 10,000 commits over a second sends about 50,
  each waking each other host's publisher for at most one outbox read. The burst is for the
  idle job, whose subscriber rings twice within a few milliseconds (its start, its outcome):
  sent one per 20 ms, the outcome's ring, the one a waiter on another host waits for, left
  about 15 ms after the start's.
- ``WakeListener`` (in each publisher) binds an exclusive, auto-deleted queue of its own to that
  exchange and rings its publisher's local bell for every ring from another host (its own host's
  rang the bell directly already). The bell drains every ring waiting before the publisher reads
  the outbox, so a flood of rings costs a few reads.
- The same message carries the other local rings a host's peers need (``WakeRinger.ring_done``,
  ``ring_cancel``), as headers: ``done``, the jobs whose outcomes were recorded (``1,2,3``; empty
  when there were more than fit in ``wakeup.RING_MAX``: every waiter reads), and ``cancel``. The
  listener rings its host's waiters with those jobs and its subscribers with the cancel. Without
  them a ``submit --wait`` on one host, whose job another host's subscriber carried out, woke only
  at its ``WAIT_SAFETY_NET_S`` read (its first read comes that long after its submit: 250 ms,
  where a wait on the job's own host took 14-20 ms, ``bench/fleet_wait.py``), and a cancel
  made on one host reached the subscriber of another at its look, once a second. A process
  that cancels with no broker connection of its own (the CLI, a script) rings this host's
  publishers instead (``wakeup.CANCEL``), and the listener sends the cancel on its own
  connection (``WakeListener.ring_cancel``). A recorder
  rings room and outcomes one after the other: the ringer's thread waits ``GATHER_S`` after
  the first ring, so both go in one message.
- A ringer whose database shows no publisher of another host (``ring_through_broker``: their
  heartbeat rows, looked at every ``OTHERS_TTL_S`` on the ringer's thread) sends nothing: on one
  host every ring message would be heard only by this host's publishers, who drop it. That was
  one message per idle job (the recorder rings when an outcome makes room), with a wake-up of
  the publisher's listener thread, its CPU and the broker's, on the two cores the next job then
  needs (bench/README.md). A host whose publisher starts is rung within ``OTHERS_TTL_S``; until
  then its poll covers it, as for any lost ring.

A ring is a hint, never the truth: while either side has no connection, rings are lost and the
publisher's ``publisher.poll_interval`` (the safety net) covers them; each side reconnects on
its own thread with backoff, never blocking the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import pika

from enstratus_workers.backoff import Backoff, Retrying
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.jobs import wakeup
from enstratus_workers.mq.amqp_common import PIKA_ERRORS, connection_parameters, why
from enstratus_workers.mq.amqp_declare import service_exchanges
from enstratus_workers.mq.amqp_nodes import NodeRanking, process_seed

log = logging.getLogger(__name__)

MIN_GAP_S = 0.02           # at most one ring message per this interval and process (50/s) ...
BURST = 3                  # ... after a burst of this many (module docstring)
GATHER_S = 0.002           # after a first ring, the rings that follow it this soon share its message
OTHERS_TTL_S = 5.0         # how long a ringer trusts its last look for other hosts' publishers
DONE_HEADER = "done"       # a ring's header: the jobs whose outcomes were recorded, "1,2,3"
CANCEL_HEADER = "cancel"   # a ring's header: a job was cancelled
RECONNECT = Backoff(first=0.5, cap=30.0, jitter="equal")
#: A connection must last this long for the reconnect delays to start over (``Retrying``).
STABLE_AFTER_S = 30.0


def wake_exchange(mq) -> str:
    return service_exchanges(mq.exchange)[2]


class _Link:
    """One blocking connection on a thread of its own, to the first broker node that answers."""

    role = "wake"

    def __init__(self, mq, host: str, client_name: str):
        self.mq, self.host = mq, host
        self.nodes = NodeRanking(mq.nodes, process_seed(), client_name)
        self.client_name = client_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"amqp-{self.role}", daemon=True)
        self.connected = threading.Event()

    def start(self) -> "_Link":
        self._thread.start()
        return self

    def _connect(self) -> pika.BlockingConnection:
        def open_node(node):
            try:
                return pika.BlockingConnection(
                    connection_parameters(self.mq, node, f"{self.client_name} {self.role}"))
            except PIKA_ERRORS as exc:
                raise ConnectionClosed(why(exc)) from exc

        _node, conn = self.nodes.connect(self.role, open_node)
        try:
            conn.channel().exchange_declare(wake_exchange(self.mq), "fanout", durable=True)
        except BaseException:
            # not yet the caller's to close: left open, each retry (a refused declare retries
            # for ever) would keep a socket and pika's ioloop until a full garbage collection
            try:
                conn.close()
            except PIKA_ERRORS:
                pass
            raise
        return conn

    def _run(self) -> None:
        retrying = Retrying(RECONNECT, stable_after=STABLE_AFTER_S)
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                retrying.succeeded()
                self._serve(conn)   # sets ``connected`` once it can ring or hear
            except (ConnectionClosed, *PIKA_ERRORS) as exc:
                delay = retrying.failed()
                log.warning("%s %s: no broker connection (%s); rings lost until it is back "
                            "(retrying in %.1fs)", self.client_name, self.role, why(exc), delay)
                self._stop.wait(delay)
            finally:
                self.connected.clear()
                if conn is not None:
                    try:
                        conn.close()
                    except PIKA_ERRORS:
                        pass

    def _serve(self, conn: pika.BlockingConnection) -> None:
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._poke()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _poke(self) -> None:
        """Wake the thread so it sees the stop."""


class WakeRinger(_Link):
    """Rings every host's publishers through the broker; ``ring()`` never blocks.

    ``others()``, when given, says whether a publisher of another host may hear a ring (the
    module docstring); asked on the ringer's thread at most every ``OTHERS_TTL_S``. While it
    says no, ``ring()`` only counts the ring (``skipped``). A look that fails counts as yes: a
    ring too many costs a read, a ring too few the poll's interval."""

    role = "wake-ringer"

    def __init__(self, mq, host: str, client_name: str, others: Callable[[], bool] | None = None):
        super().__init__(mq, host, client_name)
        self._flag = threading.Event()
        self._others = others
        self._wanted = True                  # until the first look says otherwise
        self._looked_at = float("-inf")
        self._lock = threading.Lock()        # the rings' extras below, between ring() and the thread
        #: the jobs whose outcomes the next message names; None: more than fit (a plain ring)
        self._done: list[str] | None = []
        self._done_chars = 0
        self._rang_done = False
        self._cancel = False
        self.sent = 0
        self.skipped = 0

    def ring(self) -> None:
        """Ring the other hosts' publishers."""
        if self._wanted:
            self._flag.set()
        else:
            self.skipped += 1

    def ring_done(self, job_ids) -> None:
        """Ring the other hosts' waiters (and publishers): these jobs' outcomes were recorded."""
        if not self._wanted:
            self.skipped += 1
            return
        with self._lock:
            self._rang_done = True
            if self._done is not None:
                for job_id in job_ids:
                    text = str(int(job_id))
                    self._done_chars += len(text) + 1
                    if self._done_chars >= wakeup.RING_MAX:
                        self._done = None      # a plain ring: every waiter reads its row
                        break
                    self._done.append(text)
        self._flag.set()

    def ring_cancel(self) -> None:
        """Ring the other hosts' subscribers (and publishers): a job was cancelled."""
        if not self._wanted:
            self.skipped += 1
            return
        with self._lock:
            self._cancel = True
        self._flag.set()

    def _extras(self) -> dict | None:
        """The headers of the next message (module docstring), taken: the rings' extras since
        the last message."""
        with self._lock:
            headers = {}
            if self._rang_done:
                headers[DONE_HEADER] = "" if self._done is None else ",".join(self._done)
            if self._cancel:
                headers[CANCEL_HEADER] = 1
            self._done, self._done_chars, self._rang_done, self._cancel = [], 0, False, False
        return headers or None

    def _poke(self) -> None:
        self._flag.set()

    def _look_for_others(self) -> None:
        if self._others is None or time.monotonic() - self._looked_at < OTHERS_TTL_S:
            return
        try:
            wanted = bool(self._others())
        except Exception as exc:  # noqa: BLE001 - a hint: ring rather than miss one
            log.debug("%s: could not look for other hosts' publishers (%s); ringing", self.client_name, exc)
            wanted = True
        if wanted != self._wanted:
            log.info("%s: %s", self.client_name, "other hosts' publishers are rung through the broker"
                     if wanted else "no publisher on another host: no rings through the broker")
        self._wanted, self._looked_at = wanted, time.monotonic()

    def _serve(self, conn: pika.BlockingConnection) -> None:
        channel = conn.channel()
        props = pika.BasicProperties(delivery_mode=1, expiration="10000")   # a hint: transient
        body = self.host.encode()
        tokens, refilled = float(BURST), time.monotonic()   # a bucket of messages, one per MIN_GAP_S
        self.connected.set()
        while not self._stop.is_set():
            self._look_for_others()
            # answer the broker's heartbeats while no ring comes
            if not self._flag.wait(min(OTHERS_TTL_S, max(0.5, (self.mq.heartbeat or 60) / 4))):
                conn.process_data_events(time_limit=0)
                continue
            if self._stop.is_set():
                return
            time.sleep(GATHER_S)
            now = time.monotonic()
            tokens, refilled = min(float(BURST), tokens + (now - refilled) / MIN_GAP_S), now
            if tokens < 1:   # rings meanwhile raise the flag once: one message for them all
                time.sleep((1 - tokens) * MIN_GAP_S)
                tokens, refilled = 1.0, time.monotonic()
            tokens -= 1
            self._flag.clear()
            extras = self._extras()
            channel.basic_publish(wake_exchange(self.mq), "", body, props if extras is None else
                                  pika.BasicProperties(delivery_mode=1, expiration="10000", headers=extras))
            self.sent += 1


class WakeListener(_Link):
    """A publisher's ear on the broker: ``on_wake()`` for every ring from another host, and
    ``on_done(job_ids)`` (empty: any job) and ``on_cancel()`` for the rings that carry them."""

    role = "wake-listener"

    def __init__(self, mq, host: str, client_name: str, on_wake: Callable[[], None],
                 on_done: Callable[[list[int]], None] | None = None,
                 on_cancel: Callable[[], None] | None = None):
        super().__init__(mq, host, client_name)
        self.on_wake = on_wake
        self.on_done = on_done
        self.on_cancel = on_cancel
        self.heard = 0
        self.cancels_passed_on = 0
        self._conn: pika.BlockingConnection | None = None   # while connected: for ring_cancel
        self._channel = None
        self._cancel_lock = threading.Lock()
        self._cancel_due = False                  # a cancel ring waits to be sent
        self._cancel_sent_at = float("-inf")

    def ring_cancel(self) -> None:
        """Ring the other hosts' subscribers: a job was cancelled on this host by a process with
        no broker connection of its own (``wakeup.CANCEL``, passed on by this host's publisher).
        Sent on the listener's own connection and thread, which this call only wakes (pika's
        ``add_callback_threadsafe``): it never blocks. At most one message per ``MIN_GAP_S``,
        as the ringers send theirs: a cancel ring is a datagram anyone on the host can send,
        and each message costs every other host's subscribers a look. Lost while there is no
        connection, like any ring: each subscriber's once-a-second look covers it."""
        conn = self._conn
        if conn is None:
            return
        with self._cancel_lock:
            if self._cancel_due:
                return            # one is on its way: it stands for this one too
            self._cancel_due = True
        try:
            conn.add_callback_threadsafe(self._send_cancel)
        except (*PIKA_ERRORS, RuntimeError):   # closed meanwhile
            with self._cancel_lock:
                self._cancel_due = False

    def _send_cancel(self) -> None:
        """On the listener's thread: the cancel ring, once ``MIN_GAP_S`` has passed since the last."""
        conn, channel = self._conn, self._channel
        if conn is None or channel is None or not channel.is_open:
            with self._cancel_lock:
                self._cancel_due = False
            return
        wait = self._cancel_sent_at + MIN_GAP_S - time.monotonic()
        if wait > 0:
            conn.call_later(wait, self._send_cancel)
            return
        with self._cancel_lock:
            self._cancel_due = False
        props = pika.BasicProperties(delivery_mode=1, expiration="10000", headers={CANCEL_HEADER: 1})
        channel.basic_publish(wake_exchange(self.mq), "", self.host.encode(), props)
        self._cancel_sent_at = time.monotonic()
        self.cancels_passed_on += 1

    def _serve(self, conn: pika.BlockingConnection) -> None:
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, wake_exchange(self.mq))
        mine = self.host.encode()
        self._channel = channel

        def heard(_ch, _method, props, body) -> None:
            if body != mine:
                self.heard += 1
                self.on_wake()
                if props.headers:
                    self._pass_on(props.headers)

        channel.basic_consume(queue, heard, auto_ack=True)
        self._conn = conn
        self.connected.set()   # bound: from now on no ring of another host is missed
        try:
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.25)
        finally:
            self._conn = self._channel = None
            with self._cancel_lock:
                self._cancel_due = False   # a call_later of a closed connection never runs

    def _pass_on(self, headers: dict) -> None:
        """Ring this host's waiters and subscribers as the message's headers say. A ring is a
        hint from anyone who may publish to the exchange: a ``done`` that is not a short list of
        job ids is a plain ring (every waiter reads its row, as at a ring naming no jobs)."""
        if DONE_HEADER in headers and self.on_done is not None:
            said = headers[DONE_HEADER]
            if isinstance(said, str):
                said = said.encode("ascii", "replace")
            ids = (wakeup.recorded_ids(said) if isinstance(said, bytes) and 0 < len(said) < wakeup.RING_MAX
                   else None)
            self.on_done(sorted(ids) if ids else [])
        if CANCEL_HEADER in headers and self.on_cancel is not None:
            self.on_cancel()


def ring_through_broker(settings, ringers, client_name: str, heartbeats=None) -> WakeRinger | None:
    """On RabbitMQ, a ``WakeRinger`` that the ringers among ``ringers`` (a ``Databases.ringers``)
    also ring after each commit: the publishers', the waiters' (``ring_done``) and the
    subscribers' (``ring_cancel``); None on the embedded transport (one host).
    With ``heartbeats`` (a ``HeartbeatStore``), it rings only while a publisher of another host
    has a heartbeat row, expired or not (a host that stopped cleanly removed its rows). The
    caller closes it."""
    if settings.mq.transport != "amqp":
        return None
    host = settings.worker.host_name
    others = None if heartbeats is None else (
        lambda: any(hb.daemon == "publisher" and hb.host != host for hb in heartbeats.all()))
    ringer = WakeRinger(settings.mq, host, client_name, others).start()
    for r in ringers:
        role = getattr(r, "role", None)
        if role == wakeup.PUBLISHER:
            r.also(ringer.ring)
        elif role == wakeup.WAITER:
            r.also_done(ringer.ring_done)
        elif role == wakeup.SUBSCRIBER:
            r.also(ringer.ring_cancel)
    return ringer
