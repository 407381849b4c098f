"""The AMQP transport (RabbitMQ through pika): the only modules that import pika are this one and
its ``amqp_*.py`` helpers, and pika's exceptions stop there, turned into ``ConnectionClosed``.

Broker layout, all durable: actions go to the direct exchange ``mq.exchange``; logical queue ``q``
is the queue ``mq.queue_prefix + q`` bound with routing key ``q``, which dead-letters to
``mq.queue_prefix + q + ".dead"`` (``amqp_declare.py``). Delayed messages wait in per-delay
queues that expire them into ``q`` (``amqp_delay.py``); dead letters are listed and re-driven by
``amqp_dead.py``.

Connections: publishing uses a confirm-mode ``SelectConnection`` in its own thread
(``amqp_publisher``), and a message published alone (``publish_one``: a job submitted alone, at
idle) a confirm-mode ``BlockingConnection`` of its own on the caller's thread; declare / depths / ping / delay-queue declares share one
``BlockingConnection``, on which each dead-letter operation opens a channel of its own; each
consumer (``amqp_consumer``) has its own ``BlockingConnection``. Each goes to a node of
``mq.cfg``'s ``host`` list in this process's order, and after losing one to the next
(``amqp_nodes.py``). After ``ConnectionClosed`` the transport reconnects lazily on the next call;
a consumer does not (its deliveries are void once its connection is gone): open a new one.

Imports go one way: this module imports its helpers and hands each what it needs (parameters,
queue names, a channel runner); the helpers share ``amqp_common`` and never import this module.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

import pika
import pika.exceptions

from enstratus_workers.config.hostlist import Node
from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConnectionClosed, PublishError, TransportError
from enstratus_workers.mq.amqp_common import CONNECT_TIMEOUT_S, NOT_FOUND, PIKA_ERRORS, connection_parameters, why
from enstratus_workers.mq.amqp_consumer import AmqpConsumer, AmqpTag
from enstratus_workers.mq.amqp_dead import AmqpDeadLetters
from enstratus_workers.mq.amqp_declare import QueueLayout
from enstratus_workers.mq.amqp_delay import DelayQueues, delay_bucket
from enstratus_workers.mq.amqp_nodes import NodeRanking, process_seed
from enstratus_workers.mq.amqp_publisher import ConfirmingPublisher
from enstratus_workers.mq.base import DeadLetter, NodeState, OutgoingMessage, QueueDepth, Transport

__all__ = ["AmqpConsumer", "AmqpTag", "AmqpTransport", "connection_parameters"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0   # a node that does not let a health probe in within this long counts as down
#: keep_alive looks at publish_one's connection at most this often (or a quarter of the heartbeat)
KEEP_ALIVE_EVERY_S = 1.0


class AmqpTransport(Transport):
    """RabbitMQ behind the ``Transport`` contract. Opening it does no I/O; the first call connects.

    ``seed`` orders the nodes of ``mq.host`` for this transport (``amqp_nodes.py``); it defaults to
    the process's, so all transports of a process prefer the same node.
    """

    def __init__(self, mq: MQSettings, *, client_name: str = "", seed: str | None = None):
        self.mq = mq
        self.client_name = client_name or "enstratus-workers"
        self.dead_exchange = mq.exchange + ".dead"
        self.nodes = NodeRanking(mq.nodes, process_seed() if seed is None else seed, self.client_name)
        self._publisher: ConfirmingPublisher | None = None
        self._publisher_node: Node | None = None
        self._lone: pika.BlockingConnection | None = None      # publish_one's connection
        self._lone_channel = None
        self._lone_node: Node | None = None
        self._kept_alive_at = float("-inf")   # keep_alive's last look at that connection
        self._admin: pika.BlockingConnection | None = None
        self._admin_node: Node | None = None
        self._channel = None
        # node_states' connections and their channels, by node, from one check to the next
        self._probes: dict[Node, tuple[pika.BlockingConnection, object]] = {}
        self._consumers: list[AmqpConsumer] = []
        self._layout = QueueLayout(mq.exchange, mq.queue_type, self.queue_name, self.dead_queue_name,
                                   self._reopen_channel)
        self._delays = DelayQueues(mq.queue_prefix, mq.exchange, mq.queue_type, self._manage, self._reopen_channel)
        self._dead = AmqpDeadLetters(self.dead_queue_name, self._with_channel, self.publish)

    def queue_name(self, queue: str) -> str:
        return self.mq.queue_prefix + queue

    def dead_queue_name(self, queue: str) -> str:
        return self.mq.queue_prefix + queue + ".dead"

    def _params(self, node: Node, role: str, timeout: float = CONNECT_TIMEOUT_S) -> pika.ConnectionParameters:
        return connection_parameters(self.mq, node, f"{self.client_name} {role}", timeout=timeout)

    def _blocking(self, node: Node, role: str, timeout: float = CONNECT_TIMEOUT_S) -> pika.BlockingConnection:
        """A blocking connection to ``node``, or ``ConnectionClosed`` saying why not."""
        try:
            return pika.BlockingConnection(self._params(node, role, timeout))
        except PIKA_ERRORS as exc:
            raise ConnectionClosed(why(exc)) from exc

    # -- management: one blocking connection, reopened once if it went stale -----------------

    def _manage(self, what: str, fn: Callable):
        """Run ``fn(channel)`` on the management connection, reconnecting once if it went stale
        (a blocking connection left idle misses heartbeats and is dropped by the broker) or its
        node went (the reconnect goes to the next node)."""
        for attempt in (1, 2):
            fresh = self._admin is None
            if fresh:
                self._admin_node, self._admin = self.nodes.connect("admin", lambda n: self._blocking(n, "admin"))
            try:
                if self._channel is None or not self._channel.is_open:
                    self._channel = self._admin.channel()
                return fn(self._channel)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._channel = None
                raise TransportError(f"AMQP {what} refused by the broker: {exc.reply_code} {exc.reply_text}") from exc
            except PIKA_ERRORS as exc:
                node = self._admin_node
                self._drop_admin()
                if fresh or attempt == 2:
                    self.nodes.lost(node, "admin", why(exc))
                    raise ConnectionClosed(f"AMQP {what} failed on broker node {node}: {why(exc)}") from exc
                # most often an idle connection the broker dropped for missed heartbeats: its
                # node is likely fine (if not, the reconnect finds out and moves on)
                log.info("AMQP management connection to %s went stale (%s); reconnecting", node, why(exc))

    def _reopen_channel(self):
        """A fresh management channel, after the broker closed the last one (e.g. a 404)."""
        self._channel = self._admin.channel()
        return self._channel

    def _with_channel(self, what: str, fn: Callable):
        """Run ``fn(channel)`` on a channel of its own on the management connection, then close
        that channel: whatever it got and did not ack goes back to its queue, in place."""
        def run(_shared):
            channel = self._admin.channel()
            try:
                result = fn(channel)
            except BaseException:
                if channel.is_open:
                    try:
                        channel.close()
                    except PIKA_ERRORS:
                        pass
                raise
            if channel.is_open:
                channel.close()  # a round trip: the broker has processed our acks when it returns
            return result
        return self._manage(what, run)

    def _drop_admin(self) -> None:
        conn, self._admin, self._channel = self._admin, None, None
        _close_quietly(conn)

    def declare(self, queues: Sequence[str]) -> None:
        self._manage("declare", lambda ch: self._layout.declare(ch, queues))

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        def count(ch, name):
            try:
                return ch.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                self._channel = self._admin.channel()  # a missing queue closes the channel
                return None

        def run(_ch):
            out = []
            for q in queues:
                main, dead = count(self._channel, self.queue_name(q)), count(self._channel, self.dead_queue_name(q))
                out.append(QueueDepth(queue=q, ready=main.message_count if main else 0, unacked=None,
                                      consumers=main.consumer_count if main else 0,
                                      dead=dead.message_count if dead else 0))
            return out
        return self._manage("depths", run)

    def ping(self) -> None:
        # a passive declare of a built-in exchange: a round trip that cannot fail on a live broker
        self._manage("ping", lambda ch: ch.exchange_declare("amq.direct", passive=True))

    def node_states(self) -> list[NodeState]:
        """Each node of ``mq.host``, probed at once, each on a connection of its own: the one an
        earlier probe of that node left open, with a round trip on it, else a new one, left open
        in turn. So a transport kept from one health check to the next (the pinger's,
        ``mq/shared.py``) does not open and close a connection per node per check; they are
        closed with the transport. A held connection that fails is let go and the node probed
        on a new one: a node is said down only in the words of a new connection's failure. The
        nodes found down are tried last by this transport's next connections.

        The probes run in daemon threads (a pool's threads would hold the process at exit): a
        check that gave up waiting (``pinger check -t``) is not kept alive by a silent node. A
        probe that answers after the check gave up closes its connection.
        """
        found: dict[Node, NodeState] = {}
        lock = threading.Lock()
        gave_up = threading.Event()

        def probe(node: Node) -> None:
            held = self._probes.pop(node, None)
            if held is not None:
                try:
                    held[1].exchange_declare("amq.direct", passive=True)   # a round trip
                except PIKA_ERRORS as exc:
                    log.debug("probe of %s: the held connection failed (%s); probing anew", node, why(exc))
                    _close_quietly(held[0])
                    held = None
            if held is None:
                try:
                    conn = self._blocking(node, "probe", PROBE_TIMEOUT_S)
                except ConnectionClosed as exc:
                    self.nodes.seen_down(node, str(exc))
                    found[node] = NodeState(str(node), str(exc))
                    return
                try:
                    held = (conn, conn.channel())
                except PIKA_ERRORS as exc:   # let in, then out at once: the channel failed, not the node
                    log.debug("probe of %s: no channel: %s", node, why(exc))
                    _close_quietly(conn)
            found[node] = NodeState(str(node), None)
            if held is not None:
                with lock:
                    if not gave_up.is_set():
                        self._probes[node] = held
                        return
                _close_quietly(held[0])

        probes = [threading.Thread(target=probe, args=(n,), name="amqp-probe", daemon=True) for n in self.mq.nodes]
        deadline = time.monotonic() + 2 * PROBE_TIMEOUT_S + 1   # a TCP connect, then the handshake
        for thread in probes:
            thread.start()
        for thread in probes:
            thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            gave_up.set()
        return [found.get(n) or NodeState(str(n), f"no answer within {2 * PROBE_TIMEOUT_S + 1:.0f} s")
                for n in self.mq.nodes]

    # -- publishing --------------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Immediate messages go to ``mq.exchange``; delayed ones to their delay queue through the
        default exchange (declared first, if need be). Both under the same confirms."""
        if not messages:
            return
        buckets = {id(m): delay_bucket(m.delay_ms) for m in messages if m.delay_ms > 0}
        missing = self._delays.prepare({(m.queue, buckets[id(m)]) for m in messages if id(m) in buckets})
        refused = [m.message_id for m in messages if id(m) in buckets and m.queue in missing]
        routed = [m for m in messages if not (id(m) in buckets and m.queue in missing)]
        try:
            if routed:
                self._publish(routed, buckets)
        except PublishError as exc:
            self._delays.forget()  # a delay queue deleted behind our back is declared again
            raise PublishError(str(exc), [*exc.unconfirmed, *refused]) from exc
        if refused:
            raise PublishError(f"{len(refused)} delayed message(s) for undeclared queue(s) {sorted(missing)}",
                               refused)

    def _publish(self, messages: Sequence[OutgoingMessage], buckets: dict[int, int]) -> None:
        self._left_dead_publisher()
        if self._publisher is None:
            self._publisher_node, self._publisher = self.nodes.connect("publisher", self._open_publisher)
        props = pika.BasicProperties
        try:
            self._publisher.publish([
                (*self._route(m, buckets), m.body,
                 props(delivery_mode=2, content_type="application/json", message_id=m.message_id,
                       headers=m.headers or None),
                 m.message_id)
                for m in messages])
        except PublishError as exc:
            if self._publisher.alive:
                # Refused on a live connection (nacked or returned). A channel that first published
                # to a quorum queue while its leader was being elected (its node had just died) can
                # have every later publish nacked (seen on RabbitMQ 3.10): the next one gets a new
                # channel, whose first publish finds the new leader.
                log.warning("the broker refused %d message(s) on node %s; the next publish opens a new "
                            "channel", len(exc.unconfirmed), self._publisher_node)
                self._close_publisher()
            raise
        finally:
            self._left_dead_publisher()   # the unconfirmed are the caller's to publish again

    # -- one message alone, on the caller's thread ----------------------------------------------

    def publish_one(self, message: OutgoingMessage) -> None:
        """Publish one immediate message and wait for its confirm on the calling thread, through a
        confirm-mode blocking channel of its own (a delayed one goes the batch way).

        Why: the batch path hands each batch to its ioloop thread and waits for that thread to
        send it and to hear the confirm; for a job published alone (at idle, every job) the
        hand-off was a thread woken on the job's way from its submit to its start. Published here,
        the job's delivery came 0.10-0.13 ms sooner and its action started 0.16-0.20 ms sooner
        (bench/README.md, "A job published alone on the publisher's own thread").

        The outcomes are ``publish``'s: ``PublishError`` naming the message if the broker nacked
        or returned it (and the channel is let go, as the batch path lets its channel go),
        ``ConnectionClosed`` if the connection went (its node is then tried last).
        """
        if message.delay_ms > 0:
            self.publish([message])
            return
        if self._lone is None:
            self._lone_node, self._lone = self.nodes.connect("lone publisher", self._open_lone)
        try:
            self._lone_channel.basic_publish(
                self.mq.exchange, message.queue, message.body,
                pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                     message_id=message.message_id, headers=message.headers or None),
                mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            log.warning("the broker refused message %s on node %s (%s); the next one opens a new channel",
                        message.message_id, self._lone_node, type(exc).__name__)
            self._close_lone()
            raise PublishError(f"1 of 1 message(s) not confirmed ({type(exc).__name__})",
                               [message.message_id]) from exc
        except PIKA_ERRORS as exc:
            self.nodes.lost(self._lone_node, "lone publisher", why(exc))
            self._close_lone()
            raise ConnectionClosed(f"AMQP connection lost, nothing confirmed: {why(exc)}") from exc

    def _open_lone(self, node: Node) -> pika.BlockingConnection:
        conn = self._blocking(node, "lone publisher")
        try:
            channel = conn.channel()
            for exchange in (self.mq.exchange, self.dead_exchange):
                channel.exchange_declare(exchange, "direct", durable=True)
            channel.confirm_delivery()
        except PIKA_ERRORS as exc:
            _close_quietly(conn)
            raise ConnectionClosed(why(exc)) from exc
        self._lone_channel = channel
        return conn

    def keep_alive(self) -> None:
        """Answer the broker's heartbeats on ``publish_one``'s connection (a blocking connection
        answers them only while it is called); one that went is let go, to be opened again.

        It looks at most every ``KEEP_ALIVE_EVERY_S`` (a quarter of a shorter heartbeat): the
        publisher calls it after every pass, and at idle (a pass per job) the look cost 8% of its
        CPU (bench/README.md) for heartbeats that come a minute apart."""
        if self._lone is None:
            return
        now = time.monotonic()
        if now - self._kept_alive_at < min(KEEP_ALIVE_EVERY_S, self.mq.heartbeat / 4):
            return
        self._kept_alive_at = now
        try:
            self._lone.process_data_events(time_limit=0)
        except PIKA_ERRORS as exc:
            log.info("AMQP lone publisher connection to %s went (%s); it opens again when next needed",
                     self._lone_node, why(exc))
            self._close_lone()

    def _close_lone(self) -> None:
        conn, self._lone, self._lone_channel = self._lone, None, None
        _close_quietly(conn)

    def _open_publisher(self, node: Node) -> ConfirmingPublisher:
        publisher = ConfirmingPublisher(self._params(node, "publisher"), [self.mq.exchange, self.dead_exchange],
                                        window=self.mq.confirm_window)
        try:
            publisher.start(CONNECT_TIMEOUT_S)
        except ConnectionClosed:
            raise ConnectionClosed(publisher.why_closed) from None
        return publisher

    def _left_dead_publisher(self) -> None:
        """If the publisher's connection went (its node died, say), say so and let it go."""
        if self._publisher is not None and not self._publisher.alive:
            self.nodes.lost(self._publisher_node, "publisher", self._publisher.why_closed)
            self._close_publisher()

    def _route(self, m: OutgoingMessage, buckets: dict[int, int]) -> tuple[str, str]:
        """(exchange, routing key): the delay queue, by name through the default exchange, or the queue."""
        if id(m) in buckets:
            return "", self._delays.name(m.queue, buckets[id(m)])
        return self.mq.exchange, m.queue

    def _close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    # -- dead letters (amqp_dead.py) ----------------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self._dead.list(queue, limit)

    def redrive(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        moved = self._dead.redrive(queue, message_ids)
        if moved:
            log.info("redrove %d dead letter(s) back to queue %s", moved, queue)
        return moved

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        purged = self._dead.purge(queue, message_ids)
        if purged:
            log.warning("purged %d dead letter(s) of queue %s", purged, queue)
        return purged

    def purge_dead_before(self, queue: str, before_ms: int) -> int:
        return self._dead.purge_before(queue, before_ms)

    # -- consuming ---------------------------------------------------------------------------

    def consumer(self, queues: Sequence[str], prefetch: int) -> AmqpConsumer:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        node, conn = self.nodes.connect("consumer", lambda n: self._blocking(n, "consumer"))
        consumer = AmqpConsumer(conn, [(q, self.queue_name(q)) for q in queues], prefetch,
                                dead_exchange=self.dead_exchange,
                                on_lost=lambda reason: self.nodes.lost(node, "consumer", reason))
        self._consumers = [c for c in self._consumers if not c.closed] + [consumer]
        return consumer

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []
        self._close_publisher()
        self._close_lone()
        self._drop_admin()
        probes, self._probes = self._probes, {}
        for conn, _channel in probes.values():
            _close_quietly(conn)


def _close_quietly(conn: pika.BlockingConnection | None) -> None:
    """Close a blocking connection that may be gone already (then there is nothing to close)."""
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except PIKA_ERRORS:
            pass
