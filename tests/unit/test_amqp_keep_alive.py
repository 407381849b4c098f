"""The AMQP transport's keep-alive of the connection ``publish_one`` uses (``mq/amqp.py``): the
publisher calls it after every pass, and it looks at the connection only so often."""

from __future__ import annotations

import pytest

from enstratus_workers.config.settings import MQSettings


class _CountingConnection:
    """A stand-in for publish_one's blocking connection: counts the looks at it."""

    def __init__(self):
        self.looks = 0

    def process_data_events(self, time_limit=None):
        self.looks += 1


@pytest.mark.parametrize("heartbeat,every", [(60, 1.0), (2, 0.5)])
def test_keep_alive_looks_at_the_lone_connection_at_most_so_often(monkeypatch, heartbeat, every):
    # Given a transport whose connection for lone publishes is open, and a clock we move
    from enstratus_workers.mq import amqp
    now = [1000.0]
    monkeypatch.setattr(amqp.time, "monotonic", lambda: now[0])
    t = amqp.AmqpTransport(MQSettings(transport="amqp", heartbeat=heartbeat))
    t._lone = conn = _CountingConnection()
    # When the publisher's loop calls keep_alive after each of many quick passes
    for _ in range(50):
        t.keep_alive()
        now[0] += every / 10
    # Then it looked at the connection once per interval (the first call looks at once), and a
    # call after a longer quiet looks again at once
    assert conn.looks == 5
    now[0] += 10 * every
    t.keep_alive()
    assert conn.looks == 6
