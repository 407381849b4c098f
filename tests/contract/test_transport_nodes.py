"""The AMQP transport against a ``host`` list, on the machine's broker and a port where nothing
listens: every connection goes past the node that does not answer, the health check names it,
and quorum work queues dead-letter at least once (an earlier version's queue is kept as it was).

The cluster itself (nodes dying under a flow of messages) is ``tests/fleet/test_broker_cluster.py``.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import urllib.parse
from dataclasses import replace
from types import SimpleNamespace

import pika
import pytest

from enstratus_workers.daemons.pinger.health import Health, _check_mq
from enstratus_workers.errors import CHECK_CRITICAL, CHECK_WARNING, PublishError
from enstratus_workers.layout import Layout
from enstratus_workers.mq.amqp import AmqpTransport
from enstratus_workers.mq.amqp_declare import AT_LEAST_ONCE, work_queue_arguments
from enstratus_workers.mq.amqp_nodes import ranked
from enstratus_workers.mq.base import NodeState
from tests.contract.test_transport import _broker_connections, amqp_settings, drain, messages, rabbitmqctl  # noqa: F401

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def dead_port():
    """A loopback port nobody listens on: a broker node that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(rabbitmq_url, amqp_names, dead_port):
    """mq.cfg naming a dead node and the machine's broker, in that order."""
    live = urllib.parse.urlsplit(rabbitmq_url)
    mq = amqp_settings(rabbitmq_url, amqp_names)
    return replace(mq, host=f"127.0.0.1:{dead_port}, {live.hostname}:{live.port or 5672}")


def seed_preferring(mq, host_port: str) -> str:
    return next(f"seed-{i}" for i in range(1000) if str(ranked(mq.nodes, f"seed-{i}")[0]) == host_port)


def test_every_connection_goes_past_a_node_that_does_not_answer(two_nodes, dead_port, caplog):
    # Given a transport whose first node is down
    caplog.set_level(logging.INFO, logger="enstratus_workers.mq.amqp_nodes")
    dead, live = (str(n) for n in two_nodes.nodes)
    with AmqpTransport(two_nodes, client_name="ewtest-nodes", seed=seed_preferring(two_nodes, dead)) as t:
        # When it declares, publishes and consumes
        t.declare(["work"])
        t.publish(messages("work", 3))
        got = drain(t.consumer(["work"], prefetch=10), 3)

        # Then all of it works through the live node, and the log says which node each connection
        # went to and why it skipped the other
        assert sorted(d.message_id for d in got) == ["job-0", "job-1", "job-2"]
        assert f"ewtest-nodes admin: broker node {dead} does not answer (connection refused); trying {live}" \
            in caplog.text
        for role in ("admin", "publisher", "consumer"):
            assert f"ewtest-nodes {role} connected to broker node {live}" in caplog.text


def test_node_states_name_the_node_that_does_not_answer(two_nodes):
    with AmqpTransport(two_nodes, client_name="ewtest-probe") as t:
        dead, live = (str(n) for n in two_nodes.nodes)
        assert t.node_states() == [NodeState(dead, "connection refused"), NodeState(live, None)]


def test_health_warns_naming_a_node_down_and_counts_the_nodes_up(two_nodes, tmp_path):
    # Given one of two broker nodes down
    h = Health()
    settings = SimpleNamespace(mq=two_nodes, worker=SimpleNamespace(all_queues=("work",)))
    # When the queue is checked
    assert _check_mq(settings, Layout(tmp_path), h) == "ok"
    # Then it is a WARNING naming the node, and the perfdata says 1 of 2 nodes answer
    dead = str(two_nodes.nodes[0])
    assert h.code == CHECK_WARNING
    assert h.problems == [f"broker node(s) down, 1 of 2 answer: {dead} (connection refused)"]
    assert "mq_nodes_up=1;;;0;2" in h.line()
    assert h.checks["mq_nodes"] == {dead: "connection refused", str(two_nodes.nodes[1]): "ok"}


def test_health_is_critical_naming_every_node_when_none_answers(rabbitmq_url, amqp_names, dead_port, tmp_path):
    # Given two broker nodes, both down
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        second = other.getsockname()[1]
    mq = replace(amqp_settings(rabbitmq_url, amqp_names), host=f"127.0.0.1:{dead_port},127.0.0.1:{second}")
    settings = SimpleNamespace(mq=mq, worker=SimpleNamespace(all_queues=("work",)))
    # When the queue is checked, Then it is CRITICAL naming both, and none of 2 answers
    h = Health()
    said = _check_mq(settings, Layout(tmp_path), h)
    assert h.code == CHECK_CRITICAL
    assert said == (f"no broker node answers: 127.0.0.1:{dead_port} (connection refused), "
                    f"127.0.0.1:{second} (connection refused)")
    assert h.problems == [f"queue (amqp): {said}"] and "mq_nodes_up=0;;;0;2" in h.line()


def test_a_quorum_work_queue_dead_letters_at_least_once(rabbitmq_url, amqp_names, tmp_path):
    # Given quorum queues declared by the transport
    mq = amqp_settings(rabbitmq_url, amqp_names, queue_type="quorum")
    with AmqpTransport(mq, client_name="ewtest-quorum") as t:
        t.declare(["work"])
        name = t.queue_name("work")
    # Then the work queue is at-least-once: the broker takes a declare with those arguments
    # and refuses one without them
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = conn.channel()
        channel.queue_declare(name, durable=True, arguments=work_queue_arguments("quorum", mq.exchange + ".dead"))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-dead-letter-strategy"):
            channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum",
                                                                  "x-dead-letter-exchange": mq.exchange + ".dead"})
    finally:
        conn.close()


def test_a_quorum_work_queue_of_an_earlier_version_is_kept_with_a_warning(rabbitmq_url, amqp_names, caplog):
    # Given a quorum work queue as the version before this one declared it (at-most-once)
    mq = amqp_settings(rabbitmq_url, amqp_names, queue_type="quorum")
    name, dead_exchange = mq.queue_prefix + "work", mq.exchange + ".dead"
    earlier = {k: v for k, v in work_queue_arguments("quorum", dead_exchange).items() if k not in AT_LEAST_ONCE}
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        conn.channel().queue_declare(name, durable=True, arguments=earlier)
    finally:
        conn.close()
    # When this version declares it
    with AmqpTransport(mq, client_name="ewtest-upgrade") as t:
        t.declare(["work"])
        # Then it is used as it is (messages flow), and the log says how to make it at-least-once
        t.publish(messages("work", 1))
        assert [d.message_id for d in drain(t.consumer(["work"], prefetch=10), 1)] == ["job-0"]
    assert f"queue {name} was declared by an earlier version" in caplog.text
    assert "delete it" in caplog.text


def test_a_batch_refused_on_a_live_connection_is_followed_by_a_new_channel(rabbitmq_url, amqp_names,
                                                                          rabbitmqctl, tmp_path):
    # Given a queue the broker keeps at one message, refusing (nacking) publishes beyond that
    mq = amqp_settings(rabbitmq_url, amqp_names)
    policy = f"{amqp_names['exchange']}.full"
    with AmqpTransport(mq, client_name=f"ewtest refused {amqp_names['exchange']}") as t:
        t.declare(["work", "other"])
        subprocess.run(["rabbitmqctl", "set_policy", "--apply-to", "queues", policy,
                        "^" + re.escape(t.queue_name("work")) + "$", '{"max-length": 1, "overflow": "reject-publish"}'],
                       capture_output=True, timeout=60, check=True)
        try:
            t.publish(messages("other", 1))
            before = _broker_connections(f"{t.client_name} publisher")
            # When a batch is refused in part
            with pytest.raises(PublishError):
                t.publish(messages("work", 2))
            # Then the next publish goes out on a new connection (a channel in a bad state on the
            # broker, as a quorum queue's during a leader election, is not used again), and works
            t.publish(messages("other", 1, start=1))
            after = _broker_connections(f"{t.client_name} publisher")
            assert len(before) == 1 and len(after) == 1 and after != before
        finally:
            subprocess.run(["rabbitmqctl", "clear_policy", policy], capture_output=True, timeout=60)
