"""``mq.cfg``'s ``host``: one node as before, or a RabbitMQ cluster's ``host[:port]`` entries, each
checked as a database URL's node list is (``config/hostlist.py``), with ``port`` as the default."""

from __future__ import annotations

import pytest

from enstratus_workers.config.hostlist import Node
from enstratus_workers.config.settings import MQSettings


def nodes(host: str, port: int = 5672) -> list[tuple[str, int]]:
    return [(n.host, n.port) for n in MQSettings(transport="amqp", host=host, port=port).nodes]


def test_one_host_keeps_meaning_that_host_on_the_port_key():
    # Given the host and port an existing mq.cfg has
    mq = MQSettings(transport="amqp", host="rabbit.example.com", port=5671)
    # Then it names one node, on that port, written as before
    assert mq.nodes == (Node("rabbit.example.com", 5671),)
    assert str(mq.nodes[0]) == "rabbit.example.com:5671"


@pytest.mark.parametrize("text,expected", [
    ("a, b:5673,c", [("a", 5672), ("b", 5673), ("c", 5672)]),
    ("10.0.0.7:5680,10.0.0.8", [("10.0.0.7", 5680), ("10.0.0.8", 5672)]),
    ("[::1], [2001:db8::7]:5673", [("::1", 5672), ("2001:db8::7", 5673)]),
    ("Rabbit-1.example.com.", [("rabbit-1.example.com.", 5672)]),
])
def test_a_list_names_each_node_with_its_own_port_or_the_port_key(text, expected):
    assert nodes(text) == expected


def test_ipv6_nodes_are_written_back_in_brackets():
    assert [str(n) for n in MQSettings(host="[::1]:5673, [2001:db8::7]").nodes] == ["[::1]:5673", "[2001:db8::7]:5672"]


@pytest.mark.parametrize("text,says", [
    ("", "node 1 of the host list is empty (write host1:5672,host2:5672,...)"),
    ("a,,b", "node 2 of the host list is empty"),
    ("a, b, ", "node 3 of the host list is empty"),
    ("a:", "node 1 of the host list has a bad port ''"),
    ("a:0", "node 1 of the host list has a bad port '0'"),
    ("a, b:65536", "node 2 of the host list has a bad port '65536': must be a number between 1 and 65535"),
    ("a:http", "has a bad port 'http'"),
    (":5672", "node 1 of the host list ('') is not a host name or address"),
    ("a, A:5672", "node 2 of the host list (a:5672) is listed twice"),
    ("[::1], [0:0::1]:5672", "node 2 of the host list ([::1]:5672) is listed twice"),
    ("rabbit_1", "('rabbit_1') is not a host name or address"),
    ("-rabbit", "is not a host name"),
    ("a..b", "is not a host name"),
    ("x" * 64, "is not a host name"),
    ("10.0.0.300", "('10.0.0.300') is not a host name or address"),
    ("::1", "('::1') is not a host name or address: an IPv6 address goes in brackets, as [::1]:5672"),
    ("[nope]:5672", "is not a bracketed IPv6 address"),
    ("[::1]5672", "has text after its address"),
])
def test_a_bad_entry_is_refused_naming_it(text, says):
    with pytest.raises(ValueError) as caught:
        nodes(text)
    assert says in str(caught.value)
