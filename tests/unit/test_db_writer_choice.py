"""Which node of a cluster an engine writes to (``db/writer.py``, ``db/nodes.py``): the first
healthy node in the URL's order, moved from on its loss, moved back to when it is healthy again.
Probes are stood in for here; ``tests/fleet/test_db_cluster.py`` does it with real nodes."""

from __future__ import annotations

import threading
import time

import pytest

from sqlalchemy.engine import make_url

from enstratus_workers.config.dburl import Node
from enstratus_workers.db.nodes import NodeState, Prober, first_healthy, judge
from enstratus_workers.db.writer import Writer
from tests.servicehome import free_port
from tests.thread_refusal import refuse_one_thread

A, B, C = Node("db1", 3306), Node("db2", 3306), Node("db3", 3306)


class Cluster:
    """Stands in for the probes: each node's health, and what was probed."""

    def __init__(self):
        self.healthy = {A: True, B: True, C: True}
        self.probed: list[tuple[Node, ...]] = []

    def set(self, node: Node, healthy: bool) -> None:
        self.healthy[node] = healthy

    def probe_all(self, nodes):
        self.probed.append(tuple(nodes))
        return [NodeState(n, self.healthy[n], "synced" if self.healthy[n] else "unreachable") for n in nodes]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def cluster():
    return Cluster()


@pytest.fixture
def clock():
    return Clock()


def writer_of(cluster, clock) -> Writer:
    return Writer((A, B, C), cluster.probe_all, label="database 'test'", recheck_s=5.0, clock=clock)


def test_the_first_healthy_node_in_order_is_the_writer(cluster, clock):
    # Given a cluster whose first node is down at start
    cluster.set(A, False)
    # When an engine first connects
    writer = writer_of(cluster, clock)
    # Then it writes to the second node, having probed them all once
    assert writer.current == B
    assert cluster.probed == [(A, B, C)]


def test_a_lost_writer_moves_it_to_the_next_healthy_node_once(cluster, clock):
    writer = writer_of(cluster, clock)
    assert writer.current == A
    # Given the writer node is stopped, a while after the last probe round
    cluster.set(A, False)
    clock.now += 2
    # When a connection to it fails, and then another one made before the move fails too
    assert writer.lost(A, "2013 Lost connection") == B
    assert writer.lost(A, "2013 Lost connection") == B
    # Then the writer moved to the next node, and the late report changed nothing
    assert writer.current == B and writer.moves == 1
    assert len(cluster.probed) == 2


def test_a_failed_connection_to_a_healthy_writer_does_not_move_it(cluster, clock):
    # Given one connection of a healthy node dropped (idle too long)
    writer = writer_of(cluster, clock)
    writer.lost(A, "4031 The client was disconnected by the server because of inactivity")
    # Then every process goes on writing to the same node: no move for a node that answers synced
    assert writer.current == A and writer.moves == 0


def test_with_every_node_down_the_writer_stays_and_the_next_connection_probes_again(cluster, clock):
    writer = writer_of(cluster, clock)
    assert writer.current == A
    for n in (A, B, C):
        cluster.set(n, False)
    clock.now += 2
    assert writer.lost(A, "2003 Can't connect") == A
    assert writer.moves == 0
    # When the second node comes back, the next failure (a moment later) finds it
    cluster.set(B, True)
    clock.now += 2
    assert writer.lost(A, "2003 Can't connect") == B


def test_a_failure_the_last_round_foresaw_does_not_probe_again(cluster, clock):
    # Given every node down when an engine first connects (it tries the first one anyway)
    for n in (A, B, C):
        cluster.set(n, False)
    writer = writer_of(cluster, clock)
    assert writer.current == A
    # When that connection fails a moment later
    clock.now += 0.1
    writer.lost(A, "2003 Can't connect")
    # Then that round's answer stands: one probe round, not one more per failing connection
    assert len(cluster.probed) == 1


def test_a_failure_of_a_node_just_found_healthy_probes_again_at_once(cluster, clock):
    # Given a round a moment ago found the first node synced
    writer = writer_of(cluster, clock)
    assert writer.current == A
    # When it stops and a connection to it fails right after
    cluster.set(A, False)
    clock.now += 0.1
    # Then the failure is news: a new round, and the writer moves
    assert writer.lost(A, "2013 Lost connection") == B
    assert len(cluster.probed) == 2


def test_a_recheck_moves_back_to_an_earlier_node_healthy_again(cluster, clock):
    writer = writer_of(cluster, clock)
    assert writer.current == A
    cluster.set(A, False)
    clock.now += 2
    writer.lost(A, "2013 Lost connection")
    assert writer.current == B
    # Given the first node is back and synced
    cluster.set(A, True)
    # When it is not yet time for a recheck, nothing is probed
    clock.now += 4.9
    assert not writer.recheck_due()
    # When it is
    clock.now += 0.2
    assert writer.recheck_due()
    writer.recheck()
    # Then the writer is back on the first node, having probed only nodes up to the current one
    assert writer.current == A
    assert cluster.probed[-1] == (A, B)


def test_a_recheck_leaves_a_writer_that_stopped_being_synced(cluster, clock):
    writer = writer_of(cluster, clock)
    assert writer.current == A
    # Given the writer became a donor (not synced) while writes went on
    cluster.set(A, False)
    clock.now += 5.1
    writer.recheck()
    # Then the recheck moved on to the next synced node
    assert writer.current == B


def test_processes_that_saw_different_failures_converge(cluster, clock):
    # Given two processes, one of which lost the first node and one which lost the second later
    one, two = writer_of(cluster, clock), writer_of(cluster, clock)
    assert one.current == two.current == A
    cluster.set(A, False)
    clock.now += 2
    one.lost(A, "lost")
    cluster.set(A, True)
    cluster.set(B, False)
    two.lost(A, "a timeout that was not the node's fault")   # A answers: stays
    # When both recheck after the others came back
    cluster.set(B, True)
    clock.now += 5.1
    one.recheck()
    two.recheck()
    # Then both write to the first node again
    assert one.current == two.current == A


def test_a_background_recheck_does_not_block_and_runs_once(cluster, clock):
    gate = threading.Event()
    writer = writer_of(cluster, clock)
    assert writer.current == A
    real = cluster.probe_all

    def slow(nodes):
        gate.wait(5)
        return real(nodes)

    writer._probe_all = slow
    clock.now += 5.1
    # When two checkouts find a recheck due while a probe round is slow
    writer.recheck_soon()
    writer.recheck_soon()
    # Then they returned at once; only one recheck runs
    assert writer._checking
    gate.set()
    for _ in range(100):
        if not writer._checking:
            break
        threading.Event().wait(0.02)
    assert not writer._checking
    assert len(cluster.probed) == 2    # the first connection's round, and one recheck


@pytest.mark.parametrize("wsrep_on, status, healthy, says", [
    (None, {}, True, "answers (no Galera)"),          # MySQL: no such variable
    ("OFF", {"wsrep_ready": "OFF"}, True, "answers (no Galera)"),   # MariaDB without a cluster
    ("ON", {"wsrep_ready": "ON", "wsrep_local_state": "4", "wsrep_local_state_comment": "Synced"}, True, "synced"),
    ("ON", {"wsrep_ready": "ON", "wsrep_local_state": "2", "wsrep_local_state_comment": "Donor/Desynced"},
     False, "not synced (Donor/Desynced)"),
    ("ON", {"wsrep_ready": "OFF", "wsrep_local_state": "1", "wsrep_local_state_comment": "Joining"},
     False, "not ready (Joining)"),
])
def test_a_node_is_healthy_when_synced_or_not_in_a_cluster(wsrep_on, status, healthy, says):
    state = judge(A, wsrep_on, status)
    assert (state.healthy, state.state) == (healthy, says)


def test_first_healthy_skips_the_unhealthy_in_order():
    states = [NodeState(A, False, "x"), NodeState(B, True, "synced"), NodeState(C, True, "synced")]
    assert first_healthy(states) == B
    assert first_healthy(states, skip=(B,)) == C
    assert first_healthy(states[:1]) is None


def test_a_probe_of_a_plain_mariadb_and_of_a_closed_port(mysql_server):
    # Given the machine's own MariaDB (no Galera) and a port nobody listens on
    prober = Prober(make_url("mysql+pymysql://root@127.0.0.1:3306/none"), timeout=2)
    closed = Node("127.0.0.1", free_port())
    # When both are probed at once
    plain, gone = prober.probe_all([Node("127.0.0.1", 3306), closed])
    # Then the plain server counts as healthy and the closed port says why it is not
    assert plain.healthy and plain.state == "answers (no Galera)"
    assert not gone.healthy and gone.state == "unreachable (Connection refused)"



class _Cursor:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql):
        self.conn.statements.append(sql)
        if self.conn.refuse is not None:
            raise self.conn.refuse


class _Connection:
    """Stands in for a driver connection: the statements sent, and an error to answer with."""

    def __init__(self, refuse=None):
        self.statements: list[str] = []
        self.refuse = refuse

    def cursor(self):
        return _Cursor(self)


class _Dialect:
    def __init__(self, conn):
        self.conn = conn

    def connect(self, *_args, **_kwargs):
        return self.conn


def test_a_cluster_connection_asks_for_causal_reads_and_a_single_server_url_is_not_attached():
    from enstratus_workers.config.dburl import parse
    from enstratus_workers.db.engine import mysql_engine
    from enstratus_workers.db.writer import _connect_to
    # Given a connection made to a node of a cluster
    clustered = _Connection()
    _connect_to(_Dialect(clustered), None, (), {}, A)
    # Then its reads wait for the cluster's earlier commits
    assert clustered.statements == ["SET SESSION wsrep_sync_wait = 1"]
    # And an engine of a one-server URL is not attached to a writer: its connections are plain
    lone = mysql_engine(parse("mysql+pymysql://u:p@db1:3306/jobs"))
    assert getattr(lone, "enstratus_writer", None) is None


def test_a_server_without_the_variable_still_connects_and_only_other_errors_are_logged(caplog):
    from enstratus_workers.db.writer import _connect_to
    # Given servers that refuse the variable: one does not know it (MySQL), one for another reason
    unknown = _Connection(refuse=Exception(1193, "Unknown system variable 'wsrep_sync_wait'"))
    other = _Connection(refuse=Exception(1227, "Access denied; you need the SUPER privilege"))
    # When connections are made to them
    with caplog.at_level("WARNING", logger="enstratus_workers.db.writer"):
        assert _connect_to(_Dialect(unknown), None, (), {}, A) is unknown
        assert not caplog.records
        assert _connect_to(_Dialect(other), None, (), {}, B) is other
    # Then both connect; only the unexpected refusal is said, with the server's words
    assert len(caplog.records) == 1 and "1227" in caplog.records[0].getMessage()


def test_a_recheck_thread_the_os_will_not_give_is_tried_again_at_the_next_lend(cluster, clock, monkeypatch):
    writer = writer_of(cluster, clock)
    assert writer.current == A
    refused = refuse_one_thread(monkeypatch, "db-writer-recheck")
    clock.now += 5.1
    # Given a recheck due whose thread cannot be started: the lend goes on, nothing is stuck
    writer.recheck_soon()
    assert refused and not writer._checking
    # Then the next lend starts it
    writer.recheck_soon()
    for _ in range(100):   # it ran: the next one is due a recheck interval from now
        if not writer._checking and not writer.recheck_due():
            break
        time.sleep(0.01)
    assert len(refused) == 1 and not writer.recheck_due()
