"""Fixtures of the fleet tests: clusters of their own, started once per session.

``galera_cluster`` is one 3-node Galera cluster for the whole session (starting one costs
10-20 s here). A test that stops or kills nodes takes ``galera`` instead, which hands it the
same cluster and, after the test, starts whatever it left down and waits until every node is
synced, so the next test finds three nodes again.
"""

from __future__ import annotations

import pytest

from tests.conftest import unavailable
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
