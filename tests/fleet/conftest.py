"""Fixtures of the fleet tests: clusters of their own, beside the machine's servers, started once
per session.

``galera_cluster`` is one 3-node Galera cluster for the whole session (starting one costs
10-20 s here). A test that stops or kills nodes takes ``galera`` instead, which hands it the
same cluster and, after the test, starts whatever it left down and waits until every node is
synced, so the next test finds three nodes again.

``rabbit_cluster`` is one 3-node RabbitMQ cluster for the session (``rabbit_cluster.py``, about
17 s to start here). ``rabbit`` is the same with every node running: it starts, before the test,
whatever node a test before it left stopped.
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
def rabbit_cluster(tmp_path_factory):
    """A running 3-node RabbitMQ cluster, stopped (by pid) and removed at the end."""
    reason = rabbit_harness.available()
    if reason:
        unavailable(f"no RabbitMQ cluster can be started here: {reason}")
    with rabbit_harness.RabbitCluster.started(tmp_path_factory.mktemp("rabbit-cluster")) as cluster:
        yield cluster


@pytest.fixture
def rabbit(rabbit_cluster):
    """The session's RabbitMQ cluster with every node running."""
    rabbit_cluster.ensure_running()
    return rabbit_cluster
