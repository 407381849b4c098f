"""The queue transports behind one contract (``base.py``), and the one call that picks a backend.

The backend modules are imported on demand, so the embedded transport never loads pika.
"""

from __future__ import annotations

from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from enstratus_workers.mq.base import Consumer, Delivery, NodeState, OutgoingMessage, QueueDepth, Transport

__all__ = ["Consumer", "Delivery", "NodeState", "OutgoingMessage", "QueueDepth", "Transport", "open_transport",
           "embedded_lease"]


def embedded_lease(mq: MQSettings) -> float:
    """How long an embedded consumer that stopped polling keeps its deliveries: two heartbeats,
    as a broker gives up on an AMQP peer, but at least 10 s."""
    return max(10.0, 2.0 * mq.heartbeat)


def open_transport(mq: MQSettings, layout: Layout, *, client_name: str = "") -> Transport:
    """The transport ``mq.cfg`` names. ``client_name`` labels AMQP connections on the broker.

    The embedded transport opens (and if need be creates) its SQLite file now; the AMQP transport
    connects on first use, so a daemon can start before the broker is up.
    """
    if mq.transport == "embedded":
        from enstratus_workers.mq.embedded import EmbeddedTransport

        return EmbeddedTransport(layout.resolve(mq.embedded_path), lease=embedded_lease(mq))
    if mq.transport == "amqp":
        from enstratus_workers.mq.amqp import AmqpTransport

        return AmqpTransport(mq, client_name=client_name)
    raise ConfigError(f"unknown transport {mq.transport!r} (expected 'embedded' or 'amqp')",
                      file=mq.source, key="transport")
