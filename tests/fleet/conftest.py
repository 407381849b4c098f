"""Fixtures of the fleet tests: clusters of their own, beside the machine's servers, started once
per session.

``galera_cluster`` is one 3-node Galera cluster for the whole session (starting one costs
10-20 s here). A test that stops or kills nodes takes ``galera`` instead, which hands it the
same cluster and, after the test, starts whatever it left down and waits until every node is
synced, so the next test finds three nodes again.

``rabbit_cluster`` is one 3-node RabbitMQ cluster for the session (``rabbit_cluster.py``, about
17 s to start here). A test that stops or kills nodes takes ``rabbit``: the same cluster, healed
(every node running) after the test, and before it too, should a test that used
``rabbit_cluster`` directly have left one down.
"""

from __future__ import annotations

import pytest

from tests.conftest import unavailable
from tests.fleet import rabbit_cluster as rabbit_harness
from tests.fleet.galera_cluster import GaleraCluster, missing


@pytest.fixture(scope="session")
def galera_cluster():
    """A running 3-node cluster (``tests/fleet/galera_cluster.py``), removed at the end."""
    reason = missing()
    if reason:
        unavailable(f"no Galera cluster can be started here: {reason}")
    cluster = GaleraCluster.start(size=3)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def galera(galera_cluster):
    """The session's cluster, healed (every node running and synced) after the test."""
    yield galera_cluster
    galera_cluster.heal()


@pytest.fixture(scope="session")
def rabbit_cluster():
    """A running 3-node RabbitMQ cluster (``tests/fleet/rabbit_cluster.py``), removed at the end."""
    reason = rabbit_harness.available()
    if reason:
        unavailable(f"no RabbitMQ cluster can be started here: {reason}")
    with rabbit_harness.RabbitCluster.start(size=3) as cluster:
        yield cluster


@pytest.fixture
def rabbit(rabbit_cluster):
    """The session's RabbitMQ cluster, every node running before the test and healed after it."""
    rabbit_cluster.heal()
    yield rabbit_cluster
    rabbit_cluster.heal()
