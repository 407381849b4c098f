"""What every ``amqp_*.py`` module shares, so none of them imports another to get it.

The transport (``amqp.py``) builds the connection parameters and hands each helper what it
needs: the consumer its parameters and queue names, the dead-letter operations their channel
runner and publish call. The helpers import only this module and ``base.py``, never ``amqp.py``.
"""

from __future__ import annotations

import re
import ssl

import pika
import pika.exceptions

from enstratus_workers.config.hostlist import Node
from enstratus_workers.config.settings import MQSettings

#: What a broken connection or channel raises in pika: caught at the module edge, re-raised as
#: ``ConnectionClosed``.
PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)

NOT_FOUND = 404            # reply code of a passive declare or get of a queue that does not exist
PRECONDITION_FAILED = 406  # reply code of a declare whose arguments differ from the queue's
CONNECT_TIMEOUT_S = 10.0   # TCP connect plus AMQP handshake

#: The reply code and text a broker closed a connection with, inside pika's messages about it.
_BROKER_SAID = re.compile(r"\((\d{3})\) ['\"]([^'\"]*)['\"]")

#: Our record of why and when a message was dead-lettered (set by ``Consumer.dead_letter``).
ERROR_HEADER = "x-error"
DEAD_AT_HEADER = "x-dead-at-ms"
#: The broker's record of dead-lettering (a delayed message has one from its delay queue too).
DEATH_HEADERS = frozenset({"x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
                           "x-last-death-queue", "x-last-death-reason", "x-last-death-exchange"})
_BOOKKEEPING = DEATH_HEADERS | {ERROR_HEADER, DEAD_AT_HEADER}


def delivered_headers(headers: dict | None) -> dict:
    """A delivery's headers as published: without the dead-lettering records a trip through a
    delay queue or a redrive leaves (``x-delivery-count`` of quorum queues stays: it says
    something about this delivery)."""
    return {k: v for k, v in (headers or {}).items() if k not in _BOOKKEEPING}


def own_headers(headers: dict | None) -> dict:
    """The headers a message was published with: every broker and bookkeeping header taken out."""
    return {k: v for k, v in delivered_headers(headers).items() if k != "x-delivery-count"}


def connection_parameters(mq: MQSettings, node: Node, name: str, *,
                          timeout: float = CONNECT_TIMEOUT_S) -> pika.ConnectionParameters:
    """pika parameters from mq.cfg for one broker ``node``; ``name`` shows in the broker's
    connection list. ``timeout`` bounds the TCP connect and the AMQP handshake, each."""
    ssl_options = None
    if mq.ssl:
        ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=node.host)
    return pika.ConnectionParameters(
        host=node.host, port=node.port, virtual_host=mq.vhost,
        credentials=pika.PlainCredentials(mq.user, mq.password.reveal()),
        ssl_options=ssl_options, heartbeat=mq.heartbeat,
        client_properties={"connection_name": name},
        connection_attempts=1, socket_timeout=timeout, stack_timeout=timeout,
        # a broker blocking publishers (disk or memory alarm) for this long counts as a lost connection
        blocked_connection_timeout=max(60, 2 * mq.heartbeat))


def why(exc: BaseException) -> str:
    """A connection's failure in a few words, for the log and the health check: "connection
    refused", "login refused ...", "closed by the broker: 320 CONNECTION_FORCED ..."."""
    inner = getattr(exc, "exception", None)          # pika's connector errors wrap the socket's
    if isinstance(inner, BaseException):
        return why(inner)
    tried = getattr(exc, "exceptions", None)         # its workflow errors list every attempt's
    if tried and isinstance(tried[-1], BaseException):
        return why(tried[-1])
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)):
        hint = ("login refused (check user and password)"
                if isinstance(exc, pika.exceptions.ProbableAuthenticationError)
                else "access refused (check vhost and the user's permissions)")
        said = _BROKER_SAID.search(str(exc))    # the broker's own words, e.g. "403 ACCESS_REFUSED - ..."
        return f"{hint}: {said.group(1)} {said.group(2)}" if said else hint
    if isinstance(exc, (pika.exceptions.ConnectionClosedByBroker, pika.exceptions.ChannelClosedByBroker)):
        return f"closed by the broker: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args and isinstance(exc.args[0], BaseException):
        return why(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:200]
