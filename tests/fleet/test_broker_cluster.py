"""The service on a 3-node RabbitMQ cluster of the test's own, with quorum queues: nothing is lost
when the node a publisher or a consumer is connected to goes, a delayed retry and a dead letter
outlive a node, and with every node down the daemons keep trying, ``pinger check`` says CRITICAL
naming the nodes, and the jobs wait in the outbox until a node is back."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
import time
import uuid

import pytest

from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import MQSettings
from enstratus_workers.db import open_databases
from enstratus_workers.db.jobs import NewJob
from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.layout import Layout
from enstratus_workers.mq.amqp import AmqpTransport
from enstratus_workers.mq.amqp_nodes import ranked
from enstratus_workers.mq.base import OutgoingMessage
from tests import servicehome as sh

pytestmark = [pytest.mark.fleet, pytest.mark.rabbitmq]


def cluster_mq(cluster) -> MQSettings:
    """mq.cfg for the cluster, quorum queues, and names no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return MQSettings(transport="amqp", host=cluster.amqp_hosts(), queue_type="quorum",
                      exchange=f"ewfleet.{tag}", queue_prefix=f"ewfleet.{tag}.")


def seed_preferring(mq: MQSettings, index: int) -> str:
    """A ranking seed whose first node is node ``index`` of the cluster."""
    for i in itertools.count():
        order = ranked(mq.nodes, f"seed-{i}")
        if order[0] == mq.nodes[index]:
            return f"seed-{i}"


def message(job_id: str, delay_ms: int = 0) -> OutgoingMessage:
    return OutgoingMessage("work", json.dumps({"job_id": job_id}).encode(), job_id, delay_ms=delay_ms)


def drain(consumer, n: int, timeout: float) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += consumer.poll(0.2, n - len(got))
    return got


class Flow(threading.Thread):
    """Messages flowing as the daemons make them flow: an outbox publisher (an unconfirmed message
    stays pending and is published again) and a consumer that acks what it got and opens a new
    consumer after losing one, or after ``ORPHANED_AFTER_S`` without a delivery while confirmed
    messages are missing. New messages come at ``RATE`` a second while ``producing`` is set."""

    RATE = 300
    ORPHANED_AFTER_S = 15.0

    def __init__(self, publishing: AmqpTransport, consuming: AmqpTransport):
        super().__init__(name="flow", daemon=True)
        self.publishing, self.consuming = publishing, consuming
        self.pending: list[str] = []
        self.confirmed: set[str] = set()
        self.received: list[str] = []
        self.publish_failures = self.consumer_losses = 0
        self._ids = (f"job-{i}" for i in itertools.count())
        self.producing = threading.Event()
        self.producing.set()
        self.done = threading.Event()
        self.crashed: BaseException | None = None   # what stopped the thread early, if anything
        self.last_confirmed = self.last_received = self.last_reopen = time.monotonic()
        self.reopened = 0   # consumers replaced because confirmed messages stopped coming

    def run(self) -> None:
        try:
            self._flow()
        except BaseException as exc:
            self.crashed = exc
            raise

    def state(self) -> str:
        """What the flow holds, for an assertion that failed."""
        unreceived = self.confirmed - set(self.received)
        return (f"crashed={self.crashed!r} alive={self.is_alive()} pending={len(self.pending)} "
                f"confirmed={len(self.confirmed)} received={len(self.received)} "
                f"confirmed-not-received={len(unreceived)} {sorted(unreceived)[:5]} "
                f"publish_failures={self.publish_failures} consumer_losses={self.consumer_losses} "
                f"reopened={self.reopened} last confirm {time.monotonic() - self.last_confirmed:.1f} s ago, "
                f"last delivery {time.monotonic() - self.last_received:.1f} s ago")

    def _flow(self) -> None:
        consumer, made, started = None, 0, time.monotonic()
        while not self.done.is_set():
            due = int((time.monotonic() - started) * self.RATE)
            if self.producing.is_set() and due > made:
                self.pending += [next(self._ids) for _ in range(due - made)]
                made = due
            if self.pending:
                batch, self.pending = self.pending[:50], self.pending[50:]
                try:
                    self.publishing.publish([message(i) for i in batch])
                    self.confirmed.update(batch)
                    self.last_confirmed = time.monotonic()
                except PublishError as exc:
                    self.confirmed.update(set(batch) - set(exc.unconfirmed))
                    self.pending[:0] = list(exc.unconfirmed)
                    self.publish_failures += 1
                except ConnectionClosed:
                    self.pending[:0] = batch
                    self.publish_failures += 1
                    time.sleep(0.2)
            if consumer is not None and self._orphans_suspected():
                # RabbitMQ can leave deliveries checked out to a live consumer after a quorum
                # queue's leader election, never sending them until that consumer goes
                # (rabbitmq/rabbitmq-server#15473). The daemons' safety net is the publisher's
                # recovery, which publishes a job queued too long again; here, a new consumer is
                # what has the broker deliver them.
                consumer.close()
                consumer = None
                self.reopened += 1
                self.last_reopen = time.monotonic()
            try:
                consumer = consumer or self.consuming.consumer(["work"], prefetch=100)
                got = consumer.poll(0.05, 100)
                consumer.ack(got)
                self.received += [d.message_id for d in got]
                if got:
                    self.last_received = time.monotonic()
            except ConnectionClosed:
                consumer = None
                self.consumer_losses += 1
                time.sleep(0.2)
        if consumer is not None:
            consumer.close()

    def _orphans_suspected(self) -> bool:
        """Nothing delivered (nor a consumer reopened) for ``ORPHANED_AFTER_S`` while confirmed
        messages are missing."""
        quiet = time.monotonic() - max(self.last_received, self.last_reopen)
        return quiet > self.ORPHANED_AFTER_S and not self.confirmed <= set(self.received)

    def received_after(self, count: int, more: int = 50) -> bool:
        return len(self.received) >= count + more


STALL_S = 60   # ConfirmingPublisher's default stall_timeout


def went_from(logged: str, who: str, node) -> bool:
    """``who`` said it left ``node``: it lost its connection there, or (its connection closed by
    the transport itself just then, after a refused publish) found the node not answering."""
    return f"{who} left broker node {node}:" in logged or f"{who}: broker node {node} does not answer" in logged


@pytest.mark.timeout(420)
def test_no_message_is_lost_when_the_publishers_node_and_then_the_consumers_node_go(rabbit, caplog):
    # Given a publisher on node 1 and a consumer on node 2 of the cluster, quorum queues, messages flowing
    caplog.set_level(logging.INFO, logger="enstratus_workers.mq.amqp_nodes")
    mq = cluster_mq(rabbit)
    publishing = AmqpTransport(mq, client_name="ewfleet-pub", seed=seed_preferring(mq, 0))
    consuming = AmqpTransport(mq, client_name="ewfleet-con", seed=seed_preferring(mq, 1))
    flow = Flow(publishing, consuming)
    try:
        publishing.declare(["work"])
        flow.start()
        assert sh.wait_until(lambda: len(flow.received) > 200, 30)
        assert [n for n in rabbit.connections(0) if n.startswith("ewfleet-pub")]
        assert [n for n in rabbit.connections(1) if n.startswith("ewfleet-con")]

        # When the publisher's node is killed (kill -9) while messages flow
        seen = len(flow.received)
        rabbit.kill_node(0)
        # Then the publisher goes to another node and messages keep arriving
        assert sh.wait_until(lambda: flow.received_after(seen), 60), f"none arrived after node 1 went: {flow.state()}"
        rabbit.start_node(0)

        # When the consumer's node is stopped while messages flow
        seen = len(flow.received)
        rabbit.stop_node(1)
        # Then the consumer goes to another node and messages keep arriving
        assert sh.wait_until(lambda: flow.received_after(seen), 60), f"none arrived after node 2 went: {flow.state()}"

        # When publishing stops and everything confirmed has had time to arrive: a publish left
        # unconfirmed by a queue between leaders is given up after the publisher's stall timeout
        # (60 s) and published again, so the wait covers that and the republish
        flow.producing.clear()
        assert sh.wait_until(lambda: not flow.pending and flow.confirmed <= set(flow.received), STALL_S + 60), \
            flow.state()
    finally:
        flow.done.set()
        flow.join(STALL_S + 30)
        if not flow.is_alive():
            publishing.close()
            consuming.close()
        # else the flow thread is inside a publish or a poll: pika is not thread-safe, so its
        # connections are left to the cluster's teardown, which kills the nodes

    # Then every message was confirmed and delivered at least once: none lost
    assert flow.confirmed == set(flow.received), sorted(flow.confirmed - set(flow.received))[:10]
    # and each of them left its node, saying why, and connected to another
    logged = caplog.text
    assert went_from(logged, "ewfleet-pub publisher", mq.nodes[0])
    assert went_from(logged, "ewfleet-con consumer", mq.nodes[1])
    assert logged.count("ewfleet-pub publisher connected to broker node") >= 2
    assert logged.count("ewfleet-con consumer connected to broker node") >= 2
    print(f"\n{len(flow.confirmed)} messages, {len(flow.received) - len(set(flow.received))} delivered twice, "
          f"{flow.publish_failures} failed publishes, {flow.consumer_losses} lost consumers, "
          f"{flow.reopened} consumers reopened for want of deliveries")


def test_a_delayed_retry_and_a_dead_letter_outlive_the_node_holding_them(rabbit):
    # Given a transport on node 3, which declared the queues (their leaders are there), holding
    # a message delayed by 5 s and a dead letter with its reason
    mq = cluster_mq(rabbit)
    first = AmqpTransport(mq, client_name="ewfleet-delay", seed=seed_preferring(mq, 2))
    second = AmqpTransport(mq, client_name="ewfleet-after", seed=seed_preferring(mq, 0))
    try:
        first.declare(["work"])
        first.publish([message("doomed")])
        consumer = first.consumer(["work"], prefetch=10)
        [doomed] = drain(consumer, 1, 10)
        consumer.dead_letter(doomed, "cannot decode")
        consumer.close()
        first.publish([message("retry", delay_ms=5000)])

        # When node 3 is stopped before the delay is over
        rabbit.stop_node(2)

        # Then the delayed message comes due on the nodes left, and the dead letter is still there
        again = second.consumer(["work"], prefetch=10)
        got = drain(again, 1, 60)
        assert [d.message_id for d in got] == ["retry"]
        again.ack(got)
        again.close()
        assert [(d.message_id, d.reason) for d in second.dead_letters("work")] == [("doomed", "cannot decode")]
    finally:
        first.close()
        second.close()


# -- the real daemons ---------------------------------------------------------------------------

BIN = sh.REPO / "services" / "worker" / "bin"


def daemon(home, name: str, verb: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), verb], env=sh.env_for(home), capture_output=True, text=True, timeout=60)


def pinger_check(home) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "enstratus_workers.daemons.pinger", "check", "--home", str(home),
                        "-t", "30"], env=sh.env_for(home), capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout


class Jobs:
    """Jobs submitted into the home's provisioning database, as the CLI and the API submit them."""

    def __init__(self, home):
        layout = Layout(home)
        self.dbs = open_databases(load_settings(layout).worker, layout)
        self.ids: list[int] = []

    def submit(self, n: int) -> None:
        jobs = self.dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3) for _ in range(n)])
        self.ids += [j.job_id for j in jobs]

    def counts(self) -> dict[str, int]:
        return self.dbs.jobs.counts()

    def all_succeeded(self) -> bool:
        return self.counts()["succeeded"] == len(self.ids)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_daemons_ride_out_a_node_then_wait_out_the_whole_cluster(rabbit, tmp_path):
    # Given a publisher and a subscriber of one install on the cluster (quorum queues), jobs done
    mq = cluster_mq(rabbit)
    home = sh.make_home(tmp_path, amqp={"host": mq.host, "queue_type": "quorum", "exchange": mq.exchange,
                                        "queue_prefix": mq.queue_prefix})
    log_dir = home / "services" / "worker" / "log"
    jobs = Jobs(home)
    feeding = threading.Event()
    try:
        for name in ("publisher", "subscriber"):
            assert daemon(home, name, "start").returncode == 0
        jobs.submit(100)
        assert sh.wait_until(jobs.all_succeeded, 60), jobs.counts()

        # When the node with the most connections is stopped while jobs keep coming, and started again
        def feed():
            while feeding.is_set():
                jobs.submit(10)
                time.sleep(0.1)
        feeder = threading.Thread(target=feed, daemon=True)
        feeding.set()
        feeder.start()
        busiest = rabbit.busiest_node()
        rabbit.stop_node(busiest)
        time.sleep(1)
        rabbit.start_node(busiest)
        feeding.clear()
        feeder.join(10)
        # Then every job succeeds
        assert sh.wait_until(jobs.all_succeeded, 90), jobs.counts()

        # When every node is down (a power cut: kill -9)
        for i in range(len(rabbit.nodes)):
            rabbit.kill_node(i)
        waiting = jobs.counts()["succeeded"]
        jobs.submit(20)
        # Then the jobs wait in the outbox, the daemons keep running, and pinger check is CRITICAL
        # naming every node
        code, line = pinger_check(home)
        assert code == 2 and "no broker node answers" in line, line
        assert all(str(node) in line for node in mq.nodes), line
        assert jobs.counts()["pending"] == 20 and jobs.counts()["succeeded"] == waiting
        for name in ("publisher", "subscriber"):
            assert daemon(home, name, "status").returncode == 0, f"{name} died with the cluster"

        # When the nodes are back
        rabbit.start_nodes(range(len(rabbit.nodes)))
        # Then the daemons reconnect and the jobs that waited are done
        assert sh.wait_until(jobs.all_succeeded, 90), jobs.counts()
        publisher_log = next(log_dir.glob("publisher@*.log")).read_text()
        subscriber_log = next(log_dir.glob("subscriber@*.log")).read_text()
        assert "no broker node answers" in publisher_log and "left broker node" in subscriber_log
        assert publisher_log.rfind("connected to broker node") > publisher_log.rfind("no broker node answers")
    finally:
        feeding.clear()
        for name in ("subscriber", "publisher"):
            daemon(home, name, "stop")
        sh.kill_strays(home)
        jobs.dbs.close()
