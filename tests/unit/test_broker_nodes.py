"""Which broker node a process connects to: a fleet spreads over the nodes, the processes of a lost
node spread over the rest, and a connection goes down its ranking past nodes that do not answer."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.mq.amqp_common import why
from enstratus_workers.mq.amqp_nodes import NodeRanking, process_seed, ranked

NODES = MQSettings(transport="amqp", host="rabbit1, rabbit2, rabbit3").nodes
FLEET = [f"host{h}/{pid}" for h in range(30) for pid in (1201, 1202, 1203, 1877, 2301)]   # 150 processes


def test_a_fleets_processes_spread_over_the_nodes():
    # Given 150 processes of 30 hosts, When each ranks the three nodes
    firsts = Counter(ranked(NODES, seed)[0] for seed in FLEET)
    # Then each node is the first of about a third of them (not all on the first of the list)
    assert set(firsts) == set(NODES)
    assert all(30 <= n <= 70 for n in firsts.values()), firsts


def test_the_processes_of_a_lost_node_spread_over_the_others():
    # Given the processes whose first node is rabbit1
    on_first = [seed for seed in FLEET if ranked(NODES, seed)[0] == NODES[0]]
    # When rabbit1 goes, Then their next nodes are both of the others, not one neighbour
    seconds = Counter(ranked(NODES, seed)[1] for seed in on_first)
    assert set(seconds) == {NODES[1], NODES[2]}
    assert min(seconds.values()) >= len(on_first) // 5, seconds


def test_a_processs_ranking_is_stable_and_taking_a_node_out_moves_only_its_processes():
    # The same seed ranks the same way every time (it survives restarts of the transport)
    assert all(ranked(NODES, s) == ranked(NODES, s) for s in FLEET)
    # When rabbit3 is taken out of the list, the processes that were on rabbit1 or rabbit2 stay there
    smaller = NODES[:2]
    for seed in FLEET:
        first = ranked(NODES, seed)[0]
        if first != NODES[2]:
            assert ranked(smaller, seed)[0] == first


def test_the_process_seed_is_this_host_and_pid():
    import os
    import socket

    assert process_seed() == f"{socket.gethostname()}/{os.getpid()}"


class Nodes:
    """A fake cluster: ``open`` connects to a node unless it is down."""

    def __init__(self, *down):
        self.down = set(down)
        self.tried = []

    def open(self, node):
        self.tried.append(node)
        if node in self.down:
            raise ConnectionClosed("connection refused")
        return f"connection to {node}"


def test_a_connection_goes_down_the_ranking_past_nodes_that_do_not_answer(caplog):
    caplog.set_level(logging.INFO, logger="enstratus_workers.mq.amqp_nodes")
    ranking = NodeRanking(NODES, "host7/1201", "subscriber@host7")
    first, second, third = ranking.order
    cluster = Nodes(first)
    # When its first node refuses
    node, conn = ranking.connect("consumer", cluster.open)
    # Then it is on its second, and the log says why it skipped the first and where it went
    assert (node, conn) == (second, f"connection to {second}")
    assert cluster.tried == [first, second]
    assert (f"subscriber@host7 consumer: broker node {first} does not answer (connection refused); "
            f"trying {second}") in caplog.text
    assert f"subscriber@host7 consumer connected to broker node {second}" in caplog.text
    # And the next connection of this transport goes straight to the node that answered
    cluster.tried.clear()
    assert ranking.connect("admin", cluster.open)[0] == second and cluster.tried == [second]


def test_after_losing_a_node_the_next_connection_starts_on_another(caplog):
    caplog.set_level(logging.INFO, logger="enstratus_workers.mq.amqp_nodes")
    ranking = NodeRanking(NODES, "host7/1201", "publisher@host7")
    first, second, _ = ranking.order
    cluster = Nodes()
    assert ranking.connect("publisher", cluster.open)[0] == first
    # When its connection to the first node is lost
    ranking.lost(first, "publisher", "closed by the broker: 320 CONNECTION_FORCED")
    # Then the log says why, and the next connection goes to the second node though the first answers
    assert f"publisher@host7 publisher left broker node {first}: closed by the broker: 320" in caplog.text
    assert ranking.connect("publisher", cluster.open)[0] == second


def test_nodes_left_behind_are_tried_last_not_never():
    # Given a transport that lost its first node and then could not reach its second
    ranking = NodeRanking(NODES, "host7/1201", "publisher@host7")
    first, second, third = ranking.order
    ranking.lost(first, "publisher", "connection lost")
    ranking.seen_down(second, "connection refused")
    # When only the first node is back, Then it is found once the node not left behind was tried
    # (those left behind come last, in the ranking's order)
    assert ranking.candidates() == [third, first, second]
    cluster = Nodes(second, third)
    assert ranking.connect("publisher", cluster.open)[0] == first
    assert cluster.tried == [third, first]


def test_with_every_node_down_the_error_names_each_and_why():
    ranking = NodeRanking(NODES, "host7/1201", "publisher@host7")
    with pytest.raises(ConnectionClosed) as caught:
        ranking.connect("publisher", Nodes(*NODES).open)
    said = str(caught.value)
    assert said.startswith("no broker node answers: ")
    assert all(f"{n} (connection refused)" in said for n in NODES)


def test_why_says_a_connection_failure_in_a_few_words():
    import pika.exceptions
    from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed, AMQPConnectorSocketConnectError

    refused = AMQPConnectorSocketConnectError(ConnectionRefusedError(111, "Connection refused"))
    assert why(pika.exceptions.AMQPConnectionError(refused)) == "connection refused"
    assert why(AMQPConnectionWorkflowFailed([refused])) == "connection refused"
    assert why(pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown")) == \
        "closed by the broker: 320 CONNECTION_FORCED - shutdown"
    refused = pika.exceptions.ProbableAuthenticationError(
        "Client was disconnected at a connection stage indicating a probable authentication error: "
        "(\"ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
        "mechanism PLAIN.'\",)")
    assert why(refused) == ("login refused (check user and password): 403 ACCESS_REFUSED - Login was refused "
                            "using authentication mechanism PLAIN.")
    assert why(pika.exceptions.StreamLostError("Transport indicated EOF")) == "StreamLostError: Transport indicated EOF"
