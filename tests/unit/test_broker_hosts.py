"""``mq.cfg``'s ``host``: one node as before, or a cluster's ``host[:port]`` entries, each checked."""

from __future__ import annotations

import pytest

from enstratus_workers.config.broker_hosts import BrokerNode, parse_hosts
from enstratus_workers.config.settings import MQSettings


def test_one_host_keeps_meaning_that_host_on_the_port_key():
    # Given the host and port an existing mq.cfg has
    mq = MQSettings(transport="amqp", host="rabbit.example.com", port=5671)
    # Then it names one node, on that port, written as before
    assert mq.nodes == (BrokerNode("rabbit.example.com", 5671),)
    assert str(mq.nodes[0]) == "rabbit.example.com:5671"


@pytest.mark.parametrize("text,nodes", [
    ("a, b:5673,c", [("a", 5672), ("b", 5673), ("c", 5672)]),
    ("10.0.0.7:5680,10.0.0.8", [("10.0.0.7", 5680), ("10.0.0.8", 5672)]),
    ("[::1], [2001:db8::7]:5673", [("::1", 5672), ("2001:db8::7", 5673)]),
    ("rabbit-1.example.com.", [("rabbit-1.example.com.", 5672)]),
])
def test_a_list_names_each_node_with_its_own_port_or_the_port_key(text, nodes):
    assert [(n.host, n.port) for n in parse_hosts(text, 5672)] == nodes


def test_ipv6_nodes_are_written_back_in_brackets():
    assert [str(n) for n in parse_hosts("[::1]:5673, [2001:db8::7]", 5672)] == ["[::1]:5673", "[2001:db8::7]:5672"]


def test_the_list_configobj_made_of_an_unquoted_value_reads_as_the_text_does():
    assert parse_hosts(["a", "b:1"], 5672) == parse_hosts("a, b:1", 5672)


@pytest.mark.parametrize("text,says", [
    ("", "must not be empty"),
    ("a,,b", "empty entry"),
    ("a, b, ", "empty entry"),
    ("a:", "entry 'a:' has a bad port ''"),
    ("a:0", "entry 'a:0' has a bad port '0'"),
    ("a:65536", "entry 'a:65536' has a bad port"),
    ("a:http", "entry 'a:http' has a bad port 'http'"),
    (":5672", "no host before the port"),
    ("a, A:5672", "lists node A:5672 twice"),
    ("b:5673, b:5673", "lists node b:5673 twice"),
    ("[::1], [0:0::1]:5672", "lists node [::1]:5672 twice"),
    ("rabbit_1", "entry 'rabbit_1' is not a host name or address"),
    ("-rabbit", "is not a host name"),
    ("a..b", "is not a host name"),
    ("x" * 64, "is not a host name"),
    ("10.0.0.300", "entry '10.0.0.300' is not a valid IPv4 address"),
    ("::1", "an IPv6 address goes in brackets, as [::1] or [::1]:5672"),
    ("[::1", "opens a bracket it does not close"),
    ("[nope]:5672", "'nope' is not an IPv6 address"),
    ("[::1]5672", "expected ':port' after the bracket"),
])
def test_a_bad_entry_is_refused_naming_it(text, says):
    with pytest.raises(ValueError, match=None) as caught:
        parse_hosts(text, 5672)
    assert says in str(caught.value)
