"""The health check on a queue connection held from one check to the next (the pinger's rounds,
the admin's status figures), on the machine's RabbitMQ: one connection for many checks, the same
report as checks on new connections, and the same report (and no more connection attempts) when
the broker is down or drops the held connection."""

from __future__ import annotations

import socket
import subprocess
import threading
from dataclasses import replace
from types import SimpleNamespace

import pika
import pytest

from enstratus_workers.daemons.pinger.health import Health, _check_mq
from enstratus_workers.errors import CHECK_CRITICAL, CHECK_OK, CHECK_WARNING
from enstratus_workers.layout import Layout
from enstratus_workers.mq import amqp as amqp_module
from enstratus_workers.mq import shared as shared_module
from enstratus_workers.mq.amqp import AmqpTransport
from enstratus_workers.mq.shared import SharedTransport
from tests.contract.test_transport import _broker_connections, amqp_settings, rabbitmqctl  # noqa: F401

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def connections(monkeypatch):
    """The roles of the AMQP connections this process asks for from here on (made or refused)."""
    asked: list[str] = []
    real = pika.BlockingConnection

    def counting(params):
        asked.append(params.client_properties["connection_name"].rsplit(" ", 1)[-1])
        return real(params)
    monkeypatch.setattr(amqp_module.pika, "BlockingConnection", counting)
    return asked


@pytest.fixture
def dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(mq):
    return SimpleNamespace(mq=mq, worker=SimpleNamespace(all_queues=("work",)))


def _on_nodes(rabbitmq_url, amqp_names, *ports: int, live: bool = False):
    """Settings naming loopback ``ports`` as broker nodes, then the machine's broker if ``live``."""
    broker = amqp_settings(rabbitmq_url, amqp_names)
    hosts = [f"127.0.0.1:{p}" for p in ports] + ([f"{broker.host}:{broker.port}"] if live else [])
    mq = replace(broker, host=",".join(hosts))
    return mq, _settings(mq)


def _held(mq, name: str, max_age_s: float | None = None) -> SharedTransport:
    return SharedTransport(None, None, opener=lambda: AmqpTransport(mq, client_name=name), max_age_s=max_age_s)


def _check(settings, tmp_path, held=None) -> tuple[str, Health]:
    h = Health()
    said = _check_mq(settings, Layout(tmp_path), h, held=held)
    return said, h


def test_checks_on_a_held_connection_report_what_new_connections_report_and_open_none(
        rabbitmq_url, amqp_names, connections, rabbitmqctl, tmp_path):
    # Given a broker of one node with the queue "work" declared
    mq = amqp_settings(rabbitmq_url, amqp_names)
    settings = _settings(mq)
    with AmqpTransport(mq, client_name="ewtest-held-setup") as t:
        t.declare(["work"])
    # When the queue is checked on new connections, and then three times with a held one
    before = len(connections)
    said, alone = _check(settings, tmp_path)
    per_check_alone = len(connections) - before
    name = f"ewtest-held {amqp_names['exchange']}"
    held = _held(mq, name)
    try:
        reports, opened = [], []
        for _ in range(3):
            before = len(connections)
            reports.append(_check(settings, tmp_path, held))
            opened.append(len(connections) - before)
        # Then each check said what the check on new connections said
        assert said == "ok" and alone.code == CHECK_OK
        assert alone.checks["mq_nodes"] == {str(mq.nodes[0]): "ok"}
        for said_held, h in reports:
            assert said_held == "ok" and h.as_dict() == alone.as_dict() and h.line() == alone.line()
        # and only the first opened connections (a probe and the one it kept), as many as the
        # check alone; the broker holds one of them afterwards, none once it is closed
        assert per_check_alone == 2 and opened == [2, 0, 0]
        assert len(_broker_connections(f"{name} admin")) == 1
    finally:
        held.close()
    assert _broker_connections(f"{name} admin") == []


def test_a_held_connection_the_broker_dropped_is_replaced_by_the_next_check(
        rabbitmq_url, amqp_names, connections, rabbitmqctl, tmp_path):
    # Given a held connection that has served a check
    mq = amqp_settings(rabbitmq_url, amqp_names)
    settings = _settings(mq)
    name = f"ewtest-held-drop {amqp_names['exchange']}"
    held = _held(mq, name)
    try:
        assert _check(settings, tmp_path, held)[0] == "ok"
        # When the broker closes it
        for pid in _broker_connections(f"{name} admin"):
            subprocess.run(["rabbitmqctl", "close_connection", pid, "test drops it"],
                           capture_output=True, timeout=60, check=True)
        # Then the next checks pass, and the broker holds one connection of this name again
        for _ in range(2):
            said, h = _check(settings, tmp_path, held)
            assert said == "ok" and h.code == CHECK_OK, h.problems
        assert len(_broker_connections(f"{name} admin")) == 1
    finally:
        held.close()


def test_a_held_connection_is_let_go_at_its_age_and_the_next_check_connects_anew(
        rabbitmq_url, amqp_names, connections, monkeypatch, tmp_path):
    # Given a held connection that may be 600 s old, on a clock the test moves
    clock = [1000.0]
    monkeypatch.setattr(shared_module.time, "monotonic", lambda: clock[0])
    mq = amqp_settings(rabbitmq_url, amqp_names)
    settings = _settings(mq)
    held = _held(mq, f"ewtest-held-age {amqp_names['exchange']}", max_age_s=600)
    try:
        assert _check(settings, tmp_path, held)[0] == "ok"
        # When checks come 599 s and then 601 s after it was opened
        clock[0] += 599
        before = len(connections)
        assert _check(settings, tmp_path, held)[0] == "ok"
        kept = len(connections) - before
        clock[0] += 2
        before = len(connections)
        assert _check(settings, tmp_path, held)[0] == "ok"
        # Then the first used it, the second connected anew (a probe and the one it kept)
        assert kept == 0 and len(connections) - before == 2
    finally:
        held.close()


def test_a_broker_down_is_reported_alike_and_costs_no_more_attempts_with_a_held_connection(
        rabbitmq_url, amqp_names, connections, dead_port, tmp_path):
    # Given a broker of one node that does not answer
    mq, settings = _on_nodes(rabbitmq_url, amqp_names, dead_port)
    said, alone = _check(settings, tmp_path)
    attempts_alone = len(connections)
    held = _held(mq, "ewtest-held-down")
    try:
        # When it is checked twice with a held connection
        for _ in range(2):
            before = len(connections)
            said_held, h = _check(settings, tmp_path, held)
            # Then each check is CRITICAL as without it, and tried to connect as often
            assert h.code == CHECK_CRITICAL and said_held == said
            assert h.as_dict() == alone.as_dict()
            assert len(connections) - before == attempts_alone
        assert not held.holding
    finally:
        held.close()


def test_a_cluster_s_nodes_are_still_probed_each_check_beside_the_held_connection(
        rabbitmq_url, amqp_names, connections, dead_port, tmp_path):
    # Given two broker nodes, the first down, and a held connection (on the live one)
    mq, settings = _on_nodes(rabbitmq_url, amqp_names, dead_port, live=True)
    held = _held(mq, "ewtest-held-cluster")
    try:
        reports = [_check(settings, tmp_path, held) for _ in range(2)]
    finally:
        held.close()
    # Then every check names the node that is down, as a check on new connections does
    dead = str(mq.nodes[0])
    for said, h in reports:
        assert said == "ok" and h.code == CHECK_WARNING
        assert h.problems == [f"broker node(s) down, 1 of 2 answer: {dead} (connection refused)"]
        assert h.checks["mq_nodes"] == {dead: "connection refused", str(mq.nodes[1]): "ok"}
    # and each check tried the node that is down on a new connection; the live node's probe
    # connection was held from the first check to the second
    assert connections.count("probe") == 3


class Forwarder:
    """A broker node of the test's own: a port that forwards to the machine's broker until
    ``stop()``, which closes the port and every connection made through it (the node died)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        try:   # wakes the accepting thread: a close alone would leave the port listening under it
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_a_node_that_dies_under_its_held_probe_connection_is_reported_down_at_the_next_check(
        rabbitmq_url, amqp_names, connections, tmp_path):
    # Given two nodes that answer (one through a port the test forwards), checked once on a
    # held transport
    broker = amqp_settings(rabbitmq_url, amqp_names)
    node = Forwarder((broker.host, broker.port))
    try:
        mq, settings = _on_nodes(rabbitmq_url, amqp_names, node.port, live=True)
        held = _held(mq, "ewtest-held-dies")
        try:
            said, h = _check(settings, tmp_path, held)
            assert said == "ok" and h.code == CHECK_OK and h.perf["mq_nodes_up"] == 2
            assert _check(settings, tmp_path, held)[1].code == CHECK_OK
            # When the forwarded node dies
            node.stop()
            before = len(connections)
            said, h = _check(settings, tmp_path, held)
        finally:
            held.close()
        # Then the next check names it, in a new connection's words, and counts 1 of 2 up
        forwarded = str(mq.nodes[0])
        assert said == "ok" and h.code == CHECK_WARNING
        assert h.problems == [f"broker node(s) down, 1 of 2 answer: {forwarded} (connection refused)"]
        assert h.perf["mq_nodes_up"] == 1
        # having probed it anew once, and the live node not at all (its probe connection held);
        # the held connection, if it was on the node that died, moved to the live one
        assert connections[before:].count("probe") == 1
    finally:
        node.stop()
