"""The publisher's relay of pending jobs, against the real job store on SQLite and a scripted
transport: what the broker confirmed is marked queued, what it did not stays pending and is
published again, and a lost connection is replaced on the next round."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from enstratus_workers.config.settings import PublisherSettings, WorkerSettings
from enstratus_workers.daemons.publisher import daemon as publisher_mod
from enstratus_workers.daemons.publisher.daemon import Publisher
from enstratus_workers.db import open_databases, schema
from enstratus_workers.db.jobs import NewJob
from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.jobs.fairshare import FairShare
from enstratus_workers.jobs.values import Outcome, Started
from enstratus_workers.jobs.wakeup import Bell
from enstratus_workers.jobs.lifecycle import backoff_ms
from enstratus_workers.layout import Layout

pytestmark = pytest.mark.timeout(30)


class ScriptedTransport:
    """The part of the Transport contract the publisher uses. Confirms every message unless told
    to refuse some (by job id) or to drop the connection."""

    def __init__(self, broker):
        self.broker, self.closed, self.declared = broker, False, []

    def declare(self, queues):
        self.declared.append(sorted(queues))

    def publish(self, messages):
        if self.broker.drop_next:
            self.broker.drop_next = False
            raise ConnectionClosed("broker went away")
        refused = [m.message_id for m in messages if m.message_id in self.broker.refuse]
        self.broker.published.extend(m for m in messages if m.message_id not in refused)
        self.broker.refuse.clear()
        if refused:
            raise PublishError(f"{len(refused)} not confirmed", refused)

    def publish_one(self, message):
        self.broker.lone += 1
        self.publish([message])

    def keep_alive(self):
        pass

    def depths(self, queues):
        return []

    def close(self):
        self.closed = True


class Broker:
    def __init__(self):
        self.published, self.refuse, self.drop_next, self.connections = [], set(), False, []
        self.lone = 0     # publish_one calls

    def open_transport(self, mq_settings, layout, client_name):
        self.connections.append(ScriptedTransport(self))
        return self.connections[-1]


@pytest.fixture
def broker(monkeypatch):
    b = Broker()
    monkeypatch.setattr(publisher_mod, "open_transport", b.open_transport)
    return b


@pytest.fixture
def make_publisher(tmp_path):
    opened = []

    def _make(batch: int = 500) -> Publisher:
        layout = Layout(tmp_path / "home")
        layout.ensure_dirs()
        worker = WorkerSettings(publisher_batch=batch)
        pub = Publisher(SimpleNamespace(mq=SimpleNamespace(transport="scripted"), worker=worker,
                                        publisher=PublisherSettings.of(worker)), layout, "t")
        pub.dbs = open_databases(worker, layout)
        opened.append(pub.dbs)
        return pub

    yield _make
    for dbs in opened:
        dbs.close()


def submit(pub: Publisher, n: int, queue: str = "default") -> list[str]:
    ids = []
    for i in range(n):
        job, _ = pub.dbs.jobs.submit(NewJob("demo.echo", json.dumps({"i": i}), queue, 3))
        ids.append(str(job.job_id))
    return ids


def statuses(pub: Publisher, ids) -> list[str]:
    return [pub.dbs.jobs.get(int(i)).status for i in ids]


def test_pending_jobs_are_published_once_and_marked_queued(broker, make_publisher):
    # Given three pending jobs on two queues
    pub = make_publisher()
    ids = submit(pub, 2) + submit(pub, 1, queue="other")
    # When the publisher relays once
    assert pub._relay_once().relayed == 3
    # Then each was published once, as its first attempt, under its job id, and is queued
    # (each queue's jobs oldest first, the queues taking turns)
    assert [m.message_id for m in broker.published] == [ids[0], ids[2], ids[1]]
    first = json.loads(broker.published[0].body)
    assert (first["attempt"], first["action"], first["arguments"]) == (1, "demo.echo", {"i": 0})
    assert all(m.delay_ms == 0 for m in broker.published)
    assert statuses(pub, ids) == ["queued"] * 3
    # and the configured queues were declared on connecting, the extra one when first used
    assert broker.connections[0].declared == [["default"], ["other"]]
    # When it relays again, there is nothing left to publish
    assert pub._relay_once().relayed == 0 and len(broker.published) == 3


def test_a_job_the_broker_did_not_confirm_stays_pending_and_is_published_again(broker, make_publisher):
    # Given three pending jobs and a broker that will not confirm the second
    pub = make_publisher()
    ids = submit(pub, 3)
    broker.refuse.add(ids[1])
    # When the publisher relays, the round fails
    assert pub._relay_once() is None
    # Then the confirmed two are queued, the other still pending, and the connection kept
    assert statuses(pub, ids) == ["queued", "pending", "queued"]
    assert len(broker.connections) == 1 and not broker.connections[0].closed
    # When it relays again, only that one is published, and now it is queued
    assert pub._relay_once().relayed == 1
    assert [m.message_id for m in broker.published] == [ids[0], ids[2], ids[1]]
    assert statuses(pub, ids) == ["queued"] * 3


def test_a_lost_connection_leaves_the_batch_pending_and_is_replaced_next_round(broker, make_publisher):
    # Given two pending jobs and a broker that drops the connection on the next publish
    pub = make_publisher()
    ids = submit(pub, 2)
    broker.drop_next = True
    # When the publisher relays, nothing is marked and the connection is closed and forgotten
    assert pub._relay_once() is None
    assert statuses(pub, ids) == ["pending", "pending"]
    assert broker.connections[0].closed and pub.transport is None
    # When it relays again, it connects anew (declaring the queues again) and relays both
    assert pub._relay_once().relayed == 2
    assert len(broker.connections) == 2 and broker.connections[1].declared == [["default"]]
    assert statuses(pub, ids) == ["queued", "queued"]


def test_pending_jobs_are_relayed_in_batches_of_the_configured_size(broker, make_publisher):
    # Given five pending jobs and a batch of two
    pub = make_publisher(batch=2)
    ids = submit(pub, 5)
    # Then they are relayed two, two and one, in job order (the one alone published alone)
    assert [pub._relay_once().relayed for _ in range(4)] == [2, 2, 1, 0]
    assert [m.message_id for m in broker.published] == ids
    assert pub.published == 5 and broker.lone == 1


def test_a_retried_job_is_published_as_its_next_attempt_held_back_for_its_backoff(broker, make_publisher):
    # Given a pending job that has had two attempts
    pub = make_publisher()
    (job_id,) = submit(pub, 1)
    with pub.dbs.provisioning.begin() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.job_id == int(job_id)).values(attempts=2))
    # When it is relayed
    pub._relay_once()
    # Then it is the third attempt, held back on the broker for the backoff after two
    (msg,) = broker.published
    assert json.loads(msg.body)["attempt"] == 3
    assert msg.delay_ms == backoff_ms(2) > 0


# -- room rings (jobs/wakeup.py): a job's start or end rings "room", let go when nothing waits --

@pytest.fixture
def belled(make_publisher):
    """A publisher with its bell, found by the stores' ringers through its pid file."""
    made = []

    def _make(window: int | None = None) -> Publisher:
        pub = make_publisher()
        if window is not None:
            pub.fair = FairShare(window, {})
        (pub.layout.run_dir / "publisher@t.pid").write_text("1\n")
        pub._bell = Bell(pub.layout.run_dir, "t")
        made.append(pub._bell)
        return pub

    yield _make
    for bell in made:
        bell.close()


def _waiting(pub: Publisher, interval: float) -> threading.Thread:
    t = threading.Thread(target=pub._wait_for_work, args=(interval,))
    t.start()
    return t


def _run_and_end(pub: Publisher, job_id: int, status: str = "succeeded") -> None:
    now = int(time.time() * 1000)
    pub.dbs.jobs.mark_started([Started(job_id, 1, "w", now, owner="o")])
    pub.dbs.jobs.record_outcomes([Outcome(job_id=job_id, attempt=1, status=status, worker="w", owner="o",
                                          start_ms=now, end_ms=now, result="1", error=None, retryable=True)])


def test_room_rings_are_let_go_while_nothing_is_pending_and_a_submit_still_wakes(broker, belled):
    # Given a publisher whose last pass relayed the only pending job (the outbox is empty)
    pub = belled()
    [job_id] = submit(pub, 1)
    assert pub._relay_once().relayed == 1 and pub.fair.outbox_emptied
    pub._bell.wait(0)                                   # the submit's own ring, already served
    # When the job starts and finishes (two room rings) while the publisher waits
    _run_and_end(pub, int(job_id))
    waiter = _waiting(pub, 0.5)
    waiter.join(10)
    # Then it let them go and waited out the safety net's interval, not a pass per ring
    assert not waiter.is_alive() and pub.room_rings_let_go >= 1
    # When a job is submitted during a long wait
    let_go = pub.room_rings_let_go
    waiter = _waiting(pub, 60)
    submit(pub, 1)
    waiter.join(10)
    # Then the submit's ring ends the wait at once (long before the minute's safety net)
    assert not waiter.is_alive() and pub.room_rings_let_go == let_go


def test_room_wakes_the_publisher_while_a_full_window_holds_jobs_back(broker, belled):
    # Given a window of one and two pending jobs: the pass relays one, the other waits for room
    pub = belled(window=1)
    first, second = submit(pub, 2)
    assert pub._relay_once().relayed == 1 and not pub.fair.outbox_emptied
    pub._bell.wait(0)
    # When the relayed job finishes (a room ring only) during a long wait
    waiter = _waiting(pub, 60)
    _run_and_end(pub, int(first))
    waiter.join(10)
    # Then the room woke it, and the next pass relays the job held back
    assert not waiter.is_alive() and pub.room_rings_let_go == 0
    assert pub._relay_once().relayed == 1 and statuses(pub, [second]) == ["queued"]


def test_a_retry_recorded_rings_work_not_room(broker, belled):
    # Given a publisher whose last pass emptied the outbox
    pub = belled()
    [job_id] = submit(pub, 1)
    assert pub._relay_once().relayed == 1 and pub.fair.outbox_emptied
    now = int(time.time() * 1000)
    pub.dbs.jobs.mark_started([Started(int(job_id), 1, "w", now, owner="o")])
    pub._bell.wait(0)
    # When its attempt fails in a way that is retried (the job is pending again)
    waiter = _waiting(pub, 60)
    pub.dbs.jobs.record_outcomes([Outcome(job_id=int(job_id), attempt=1, status="pending", worker="w", owner="o",
                                          start_ms=now, end_ms=now, result=None, error="boom", retryable=True)])
    waiter.join(10)
    # Then the publisher woke for it at once: a retry is work, never only room
    assert not waiter.is_alive() and pub.room_rings_let_go == 0
    assert pub._relay_once().relayed == 1

