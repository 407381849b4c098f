"""A submitter that publishes its own jobs (``jobs/direct.py``), against the embedded SQLite and a
real MariaDB: what it claims, what it leaves to the relay, and that a job is neither lost nor
published twice when the submitter fails or dies between its commit and its publish."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import NewJob, Started, open_databases
from enstratus_workers.db.instances import InstanceStore
from enstratus_workers.db.pauses import ACCOUNT, QUEUE, fleet_pauses
from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.jobs.direct import DirectPublisher
from enstratus_workers.jobs.fairshare import FairShare
from enstratus_workers.layout import Layout
from tests.thread_refusal import refuse_one_thread


class FakeTransport:
    """Records what it published; ``refuse`` (message ids) are nacked when waited for, ``fail``
    raises when a publish begins, ``lost`` when it is waited for; ``gate`` (an Event) holds the
    confirms back until it is set."""

    def __init__(self, fail: BaseException | None = None, refuse=(), lost: BaseException | None = None,
                 gate: threading.Event | None = None):
        self.fail, self.refuse, self.lost, self.gate = fail, set(refuse), lost, gate
        self.published: list = []
        self.declared: list = []
        self.closed = False

    def declare(self, queues):
        self.declared.extend(queues)

    def publish_begin(self, messages):
        if self.fail is not None:
            raise self.fail
        self.published.extend(m for m in messages if m.message_id not in self.refuse)
        refused = [m.message_id for m in messages if m.message_id in self.refuse]

        def wait():
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.lost is not None:
                raise self.lost
            if refused:
                raise PublishError("nacked", refused)
        return wait

    def close(self):
        self.closed = True


def _urls(request):
    if request.param == "sqlite":
        return "sqlite:///data/prov.db", "sqlite:///data/anal.db"
    url = request.getfixturevalue("mysql_url")
    return url, url


@pytest.fixture(params=["sqlite", "mysql"])
def dbs(request, tmp_path):
    url_p, url_a = _urls(request)
    worker = WorkerSettings(provisioning_url=Secret(url_p), analytics_url=Secret(url_a))
    dbs = open_databases(worker, Layout(tmp_path))
    dbs.settings, dbs.tmp_path = worker, tmp_path
    dbs.rings = 0

    def ring():
        dbs.rings += 1
    dbs.jobs._on_pending = ring
    yield dbs
    dbs.close()


def direct_on(dbs, window=100, **fake) -> tuple[DirectPublisher, list[FakeTransport]]:
    """Make ``dbs.jobs`` publish directly through fakes (a new one per connection opened)."""
    opened: list[FakeTransport] = []

    def opener():
        opened.append(FakeTransport(**fake))
        return opened[-1]
    direct = DirectPublisher(opener, window)
    dbs.jobs.publish_directly(direct)
    return direct, opened


def submit(dbs, n=1, account=None, queue="default") -> list[int]:
    """Submit ``n`` jobs one by one, each in its own transaction (only a job stored alone is
    claimed); with direct publishing, wait until they were published and settled (in the direct
    publisher's thread)."""
    ids = []
    for _ in range(n):
        ids += [j.job_id for j in dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 3, account=account)])]
        if dbs.jobs.direct is not None:
            assert dbs.jobs.direct.drain(10)
    return ids


def submit_together(dbs, n, queue="default") -> list[int]:
    return [j.job_id for j in dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 3) for _ in range(n)])]


def relayed(dbs) -> list[int]:
    seen = []
    dbs.jobs.relay(FairShare(window=None), 500, seen.extend)
    return [j.job_id for j in seen]


def test_a_job_for_an_idle_queue_is_published_by_its_submitter_and_marked_queued_without_a_ring(dbs):
    direct, opened = direct_on(dbs)
    # When one job is submitted to an idle queue
    job_id = dbs.jobs.submit(NewJob("noop", '{"a": 1}', "default", 4))[0].job_id
    assert direct.drain(10)
    # Then the submitter published it as the relay would have (attempt 1, its own id), once
    (message,) = opened[0].published
    assert message.message_id == str(job_id) and message.queue == "default" and message.delay_ms == 0
    assert json.loads(message.body) == {"job_id": job_id, "action": "noop", "arguments": {"a": 1},
                                        "attempt": 1, "max_attempts": 4}
    assert opened[0].declared == ["default"]
    # and marked it queued, claim ended; nobody rang the publishers, and the relay has nothing
    row = dbs.jobs.get(job_id)
    assert (row.status, row.claimed_until_ms) == ("queued", None) and row.queued_timestamp is not None
    assert dbs.rings == 0 and relayed(dbs) == [] and direct.sent == 1
    # and a second job reuses the connection and its declaration
    submit(dbs)
    assert len(opened) == 1 and len(opened[0].published) == 2 and opened[0].declared == ["default"]


def test_where_the_relay_would_hold_a_job_back_its_submitter_leaves_it_to_the_relay(dbs):
    instances = InstanceStore(dbs.provisioning)
    instances.ensure_seeded(dbs.settings)
    instances.add_queue("other")
    instances.add_queue("third")
    pauses = fleet_pauses(dbs)
    # Given an older job pending on the default queue (submitted before direct publishing)
    older = submit(dbs)
    direct, opened = direct_on(dbs, window=2)
    # When a job follows it there, Then it is not claimed: it waits its turn behind the older one
    behind = submit(dbs)
    assert opened == [] and dbs.rings == 2
    assert relayed(dbs) == older + behind
    # When the queue's window is full (2 queued), Then the next is left to the relay's window
    full = submit(dbs)
    assert opened == [] and dbs.jobs.get(full[0]).claimed_until_ms is None
    # When a queue is paused, or the job's account is, Then neither is claimed
    pauses.pause(QUEUE, "other")
    pauses.pause(ACCOUNT, "A")
    on_paused_queue = submit(dbs, queue="other")
    of_paused_account = submit(dbs, account="A", queue="third")
    assert opened == [] and dbs.rings == 5
    # while another account on another queue goes directly, unaffected by the others
    (fine,) = submit(dbs, account="B", queue="third")
    assert [m.message_id for m in opened[0].published] == [str(fine)]
    # and jobs stored together (a load, or a list) are the relay's, which carries many per pass
    pauses.resume(QUEUE, "other")
    assert submit_together(dbs, 3, queue="other") and len(opened[0].published) == 1
    rows = [dbs.jobs.get(i) for i in (*on_paused_queue, *of_paused_account)]
    assert {(r.status, r.claimed_until_ms) for r in rows} == {("pending", None)}


def test_jobs_the_broker_did_not_confirm_are_handed_back_to_the_relay_at_once(dbs):
    # Given a broker that confirms one job and nacks the next
    direct, opened = direct_on(dbs, refuse={"placeholder"})
    first = submit(dbs)
    opened[-1].refuse = {str(first[0] + 2)}
    ok = submit(dbs)[0]
    direct.drain(10)
    (nacked,) = submit(dbs)
    # Then the confirmed one is queued; the nacked one is pending, unclaimed, and the publishers rung
    assert dbs.jobs.get(ok).status == "queued"
    row = dbs.jobs.get(nacked)
    assert (row.status, row.claimed_until_ms) == ("pending", None) and dbs.rings == 1
    assert relayed(dbs) == [nacked] and direct.handed_back == 1
    # and the connection is dropped: the next submit opens another
    assert opened[0].closed
    submit(dbs)
    assert len(opened) == 2


@pytest.mark.parametrize("error", [ConnectionClosed("gone"), OSError("refused"), RuntimeError("a bug")])
@pytest.mark.parametrize("when", ["fail", "lost"])
def test_a_submit_never_fails_for_its_publish(dbs, error, when):
    # Given a broker that cannot be reached, or lost before it confirmed (or a transport that
    # fails in any way)
    direct, opened = direct_on(dbs, **{when: error})
    # When a job is submitted, Then it is stored, handed to the relay and the publishers rung
    (job_id,) = submit(dbs)
    row = dbs.jobs.get(job_id)
    assert (row.status, row.claimed_until_ms) == ("pending", None) and dbs.rings == 1
    assert relayed(dbs) == [job_id]


def test_a_broker_that_refuses_the_connection_leaves_every_job_to_the_relay(dbs):
    def opener():
        raise ConnectionClosed("connection refused")
    dbs.jobs.publish_directly(DirectPublisher(opener, None))
    ids = submit(dbs, 3)
    assert relayed(dbs) == ids and dbs.rings == 3


def _submit_and_die(url_p, url_a, root, claim_ms):
    """In a child: claim a job, then die (SIGKILL-like) before publishing it."""
    from enstratus_workers.db import outbox

    outbox.CLAIM_MS = claim_ms
    dbs = open_databases(WorkerSettings(provisioning_url=Secret(url_p), analytics_url=Secret(url_a)), Layout(Path(root)))

    def opener():
        os._exit(9)   # between the commit and the publish: no cleanup runs
    direct = DirectPublisher(opener, None)
    dbs.jobs.publish_directly(direct)
    dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)])
    direct.drain(30)   # its thread dies in the opener


def test_a_submitter_killed_between_its_commit_and_its_publish_costs_the_job_its_claim_only(dbs, request):
    # Given a submitter process that claims a job for 1.5 s, commits it and dies before publishing
    url = str(dbs.provisioning.url.render_as_string(hide_password=False))
    url_a = str(dbs.analytics.url.render_as_string(hide_password=False))
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_submit_and_die, args=(url, url_a, str(dbs.tmp_path), 1_500))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    (job,) = dbs.jobs.list("pending")
    assert job.claimed_until_ms is not None
    # When the relay passes while the claim holds, Then it leaves the job alone
    assert relayed(dbs) == []
    # When the claim has run out, Then the relay publishes it, once
    time.sleep(max(0.0, (job.claimed_until_ms - time.time() * 1000) / 1000) + 0.05)
    assert relayed(dbs) == [job.job_id] and relayed(dbs) == []
    assert dbs.jobs.get(job.job_id).status == "queued"


def test_a_claimed_job_that_starts_or_is_given_back_loses_its_claim(dbs):
    # Given claimed jobs whose submitter never settled them (its publish hung, say)
    direct, opened = direct_on(dbs)
    direct.hand = lambda jobs, settle: None    # published nothing, settled nothing
    a, b = submit(dbs, 2)
    assert all(dbs.jobs.get(i).claimed_until_ms for i in (a, b))
    # When a delivery of one starts it (a subscriber runs a pending row's first attempt)
    dbs.jobs.mark_started([Started(a, 1, "w", 1, "me")])
    # Then its claim ends with it; and one given back to the outbox is the relay's at once
    assert dbs.jobs.get(a).claimed_until_ms is None
    assert dbs.jobs.give_back([(b, 1)]) == 1
    assert dbs.jobs.get(b).claimed_until_ms is None and relayed(dbs) == [b]


def test_submitters_publishing_directly_beside_a_relay_never_publish_a_job_twice(dbs):
    # Given 4 threads submitting one job at a time with direct publishing, and a relay looping
    direct, opened = direct_on(dbs, window=None)
    by_relay: list[int] = []
    stop = threading.Event()

    def relay_loop():
        while not stop.is_set():
            by_relay.extend(relayed(dbs))

    def submitter():
        for i in range(25):
            dbs.jobs.submit(NewJob("noop", "{}", "default", 3, account=f"acct{i % 3}"))
    relay = threading.Thread(target=relay_loop)
    relay.start()
    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert direct.drain(30)
    stop.set()
    relay.join(60)
    by_relay.extend(relayed(dbs))
    # Then every job was published exactly once, by one or the other, and all are queued
    direct_ids = [int(m.message_id) for t in opened for m in t.published]
    counts = Counter(direct_ids + by_relay)
    assert len(counts) == 100 and set(counts.values()) == {1}
    assert dbs.jobs.counts()["queued"] == 100
    assert direct_ids, "no job went directly: the claims were never taken"


def test_when_the_os_refuses_the_publisher_thread_the_submitter_waits_for_its_confirms_itself(dbs, monkeypatch):
    # Given a direct publisher whose thread the OS will not start once
    direct, opened = direct_on(dbs)
    refused = refuse_one_thread(monkeypatch, "direct-publisher")
    # When a job is submitted, Then it is published and marked queued all the same, in the
    # submitter's own thread, before its submit returns
    (job_id,) = [j.job_id for j in dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)])]
    assert refused and [m.message_id for m in opened[0].published] == [str(job_id)]
    assert dbs.jobs.get(job_id).status == "queued" and dbs.rings == 0
    # and the next submit gets a thread again
    (next_id,) = submit(dbs)
    assert dbs.jobs.get(next_id).status == "queued"


def test_close_publishes_what_was_handed_over_and_later_jobs_go_to_the_relay(dbs):
    # Given jobs handed to the direct publisher and not yet confirmed (the broker is slow)
    gate = threading.Event()
    direct, opened = direct_on(dbs, gate=gate)
    ids = [j.job_id for _ in range(3) for j in dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)])]
    assert {dbs.jobs.get(i).status for i in ids} == {"pending"}
    # When the process closes it (the connection answers meanwhile)
    threading.Timer(0.2, gate.set).start()
    direct.close()
    # Then they were confirmed and marked queued before it closed
    assert sorted(int(m.message_id) for m in opened[0].published) == ids and opened[0].closed
    assert {dbs.jobs.get(i).status for i in ids} == {"queued"}
    # and a job submitted after the close is the relay's at once
    (late,) = [j.job_id for j in dbs.jobs.submit_jobs([NewJob("noop", "{}", "default", 3)])]
    assert relayed(dbs) == [late]


def test_above_a_low_rate_new_jobs_are_the_relays_and_below_it_again_the_submitters(dbs):
    from enstratus_workers.jobs import direct as direct_module

    # Given as many jobs published directly within the rate's window as it takes
    direct, opened = direct_on(dbs)
    first = submit(dbs, direct_module.LOW_RATE_JOBS)
    assert len(opened[0].published) == len(first) and not direct.takes_more()
    # (the test relies on those few submits taking less than the window: they take milliseconds)
    # When another job is submitted at once (a load building), Then it is not claimed: the
    # relay, which carries many jobs per pass, is rung for it
    (more,) = submit(dbs, account="B")
    assert dbs.jobs.get(more).claimed_until_ms is None and dbs.rings == 1
    assert relayed(dbs) == [more]
    # and once the window has passed, the next one goes directly again
    time.sleep(direct_module.LOW_RATE_WINDOW_S + 0.02)
    assert direct.takes_more()
    (later,) = submit(dbs)
    assert opened[0].published[-1].message_id == str(later)
