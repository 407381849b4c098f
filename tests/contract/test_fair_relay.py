"""The fair relay against the embedded SQLite and a real MariaDB (``db/outbox.py``): the window,
turns by account, pauses, giving paused work back, and several publishers never relaying a job
twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import NewJob, Outcome, Started, open_databases
from enstratus_workers.db.instances import InstanceStore, NotFound
from enstratus_workers.db.pauses import ACCOUNT, QUEUE, fleet_pauses
from enstratus_workers.jobs.fairshare import FairShare
from enstratus_workers.layout import Layout
from tests.statements_seen import statements_of


@pytest.fixture(params=["sqlite", "mysql"])
def dbs(request, tmp_path):
    if request.param == "sqlite":
        url_p, url_a = "sqlite:///data/prov.db", "sqlite:///data/anal.db"
    else:
        url_p = url_a = request.getfixturevalue("mysql_url")
    worker = WorkerSettings(provisioning_url=Secret(url_p), analytics_url=Secret(url_a))
    dbs = open_databases(worker, Layout(tmp_path))
    dbs.settings = worker
    yield dbs
    dbs.close()


def submit(dbs, account, n, queue="default") -> list[int]:
    jobs = dbs.jobs.submit_jobs([NewJob("noop", "{}", queue, 3, account=account) for _ in range(n)])
    return [j.job_id for j in jobs]


def relay(dbs, fair, batch=500) -> list:
    """One pass; the jobs published, in order."""
    seen = []
    dbs.jobs.relay(fair, batch, seen.extend)
    return seen


def account_of(dbs, job_ids) -> list:
    return [dbs.jobs.get(i).account for i in job_ids]


def finish(dbs, relayed) -> None:
    dbs.jobs.record_outcomes([Outcome(j.job_id, 1, "succeeded", "w", 1, 2, None, None, "me") for j in relayed])


def test_the_window_holds_the_backlog_in_the_outbox_until_jobs_start_or_end(dbs):
    # Given 10 pending jobs of one account and a window of 4
    ids = submit(dbs, "A", 10)
    fair = FairShare(window=4)
    # When the publisher relays, Then it relays 4, oldest first, and then none while they wait
    first = relay(dbs, fair)
    assert [j.job_id for j in first] == ids[:4] and relay(dbs, fair) == []
    # When one starts and one ends, Then two more go out
    dbs.jobs.mark_started([Started(ids[0], 1, "w", 1, "me")])
    finish(dbs, first[1:2])
    assert [j.job_id for j in relay(dbs, fair)] == ids[4:6]
    # When one is to be retried, Then its retry goes out in its turn (oldest first) and, held
    # in a delay queue, does not count: the room it leaves takes one more first attempt
    dbs.jobs.record_outcomes([Outcome(ids[2], 1, "pending", "w", 1, 2, None, "boom", "me", True)])
    assert [(j.job_id, j.attempts) for j in relay(dbs, fair)] == [(ids[2], 1)]
    assert [j.job_id for j in relay(dbs, fair)] == [ids[6]]
    assert relay(dbs, fair) == []


def test_the_probe_finds_every_account_waiting_on_every_queue_and_the_queued_counts(dbs):
    # Given pending jobs of accounts that differ in case and accent, and of none, on two
    # queues, beside queued, running and finished ones
    from enstratus_workers.db.outbox import probe

    for account, queue in [("A", "default"), ("a", "default"), ("á", "default"), (None, "default"),
                           ("A", "other"), ("Zürich AG", "other"), ("gone", "default")]:
        submit(dbs, account, 2, queue=queue)
    relay(dbs, FairShare(window=None), batch=1000)            # everything queued...
    submit(dbs, "A", 1)                                       # ...then pending again, but "gone"
    submit(dbs, "a", 1)
    submit(dbs, "á", 1)
    submit(dbs, None, 1)
    submit(dbs, "A", 1, queue="other")
    submit(dbs, "Zürich AG", 1, queue="other")
    # When a relay pass reads the outbox
    with dbs.provisioning.connect() as conn:
        outlook = probe(conn)
    # Then it finds each (queue, account) with pending jobs once, exactly as spelled, and the
    # first attempts queued per queue
    assert {q: sorted(a, key=str) for q, a in outlook.waiting.items()} == {
        "default": sorted(["A", "a", "á", None], key=str), "other": ["A", "Zürich AG"]}
    assert dict(outlook.queued) == {"default": 10, "other": 4}


def test_an_account_that_comes_later_is_relayed_in_turn_not_after_the_backlog(dbs):
    # Given a backlog of 200 jobs of A, then 5 of B, and a window of 10
    submit(dbs, "A", 200)
    late = submit(dbs, "B", 5)
    fair = FairShare(window=10)
    # When the publisher relays the window
    first = relay(dbs, fair)
    # Then A and B take turns in it: every B job goes out now, interleaved, not after 200 of A
    assert Counter(j.job_id in late for j in first) == {True: 5, False: 5}
    assert [j.job_id in late for j in first][:2] in ([True, False], [False, True])


def test_jobs_without_an_account_share_one_turn(dbs):
    submit(dbs, None, 20)
    submit(dbs, "A", 20)
    fair = FairShare(window=10)
    assert Counter(account_of(dbs, [j.job_id for j in relay(dbs, fair)])) == {None: 5, "A": 5}


def test_paused_queues_and_accounts_wait_in_the_outbox_until_resumed(dbs):
    # Given jobs of A and B on the default queue and of C on another, and A and that queue paused
    instances = InstanceStore(dbs.provisioning)
    instances.ensure_seeded(dbs.settings)
    instances.add_queue("other")   # a queue declared a moment ago is known at once
    pauses = fleet_pauses(dbs)
    a, b, c = submit(dbs, "A", 3), submit(dbs, "B", 3), submit(dbs, "C", 3, queue="other")
    pauses.pause(ACCOUNT, "A")
    pauses.pause(QUEUE, "other")
    fair = FairShare(window=100)
    # When the publisher relays, Then only B's jobs go out
    assert sorted(j.job_id for j in relay(dbs, fair)) == b
    assert relay(dbs, fair) == []
    # When both are resumed, Then the rest go out, no attempt counted
    pauses.resume(ACCOUNT, "A")
    pauses.resume(QUEUE, "other")
    rest = relay(dbs, fair)
    assert sorted(j.job_id for j in rest) == sorted(a + c) and {j.attempts for j in rest} == {0}


def test_pausing_an_unknown_queue_is_refused_and_a_forgotten_one_can_be_resumed(dbs):
    instances = InstanceStore(dbs.provisioning)
    instances.ensure_seeded(dbs.settings)
    pauses = fleet_pauses(dbs)
    with pytest.raises(NotFound, match="no queue 'nope'"):
        pauses.pause(QUEUE, "nope")
    instances.add_queue("gone")
    pauses.pause(QUEUE, "gone")
    instances.remove_queue("gone")
    assert pauses.resume(QUEUE, "gone").paused is False and pauses.list() == []


def test_a_delivery_of_a_paused_job_is_given_back_at_the_same_attempt_count(dbs):
    # Given a job relayed (queued), one running, and a retry relayed as its second attempt
    queued, running, retried = submit(dbs, "A", 3)
    fair = FairShare(window=10)
    relay(dbs, fair)
    dbs.jobs.mark_started([Started(running, 1, "w", 1, "me")])
    dbs.jobs.record_outcomes([Outcome(retried, 1, "pending", "w", 1, 2, None, "boom", "me", True)])
    relay(dbs, fair)
    # When their deliveries are given back (the running one's attempt is not open: untouched)
    given = dbs.jobs.give_back([(queued, 1), (running, 1), (retried, 2)])
    # Then the open two are pending again with the attempts they had; the running one runs
    assert given == 2
    rows = {i: dbs.jobs.get(i) for i in (queued, running, retried)}
    assert [(r.status, r.attempts) for r in rows.values()] == [("pending", 0), ("running", 1), ("pending", 1)]


def test_a_lone_job_after_the_outbox_was_emptied_is_relayed_without_the_probe(dbs, monkeypatch):
    # Given a publisher whose last pass found the outbox empty
    fair = FairShare(window=10)
    assert relay(dbs, fair) == [] and fair.outbox_emptied
    # When one job is submitted and it relays
    [job] = submit(dbs, "A", 1)
    statements = statements_of(dbs.provisioning, monkeypatch)
    # Then the job goes out, read in one statement: no probe, no take per group
    assert [j.job_id for j in relay(dbs, fair)] == [job]
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) == 1 and "enstratus_pause" in reads[0]
    assert dbs.jobs.get(job).status == "queued" and fair.outbox_emptied


def test_the_lone_read_keeps_pauses_and_the_window(dbs):
    # Given a window of 1 and a publisher whose last pass emptied the outbox
    instances = InstanceStore(dbs.provisioning)
    instances.ensure_seeded(dbs.settings)
    pauses = fleet_pauses(dbs)
    fair = FairShare(window=1)
    relay(dbs, fair)
    # When a job of a paused account is the only one pending, Then it waits in the outbox
    pauses.pause(ACCOUNT, "A")
    [held] = submit(dbs, "A", 1)
    assert relay(dbs, fair) == [] and not fair.outbox_emptied
    pauses.resume(ACCOUNT, "A")
    assert [j.job_id for j in relay(dbs, fair)] == [held]
    # When the queue is paused, likewise
    relay(dbs, fair)
    pauses.pause(QUEUE, "default")
    [other] = submit(dbs, "B", 1)
    assert fair.outbox_emptied and relay(dbs, fair) == []
    pauses.resume(QUEUE, "default")
    # When the window is full (a job relayed, not started), Then a lone job waits for room ...
    dbs.jobs.mark_started([Started(held, 1, "w", 1, "me")])
    assert [j.job_id for j in relay(dbs, fair)] == [other]
    assert relay(dbs, fair) == [] and fair.outbox_emptied
    [third] = submit(dbs, "B", 1)
    assert relay(dbs, fair) == [] and dbs.jobs.get(third).status == "pending"
    # ... until the queued one starts
    dbs.jobs.mark_started([Started(other, 1, "w", 1, "me")])
    assert [j.job_id for j in relay(dbs, fair)] == [third]


def reads_of(statements) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]


def test_a_few_jobs_of_two_accounts_after_the_outbox_was_emptied_are_dealt_in_turns_from_one_read(dbs, monkeypatch):
    # Given a publisher whose last pass emptied the outbox, then 3 jobs of A and 3 of B
    fair = FairShare(window=4)
    relay(dbs, fair)
    a, b = submit(dbs, "A", 3), submit(dbs, "B", 3)
    statements = statements_of(dbs.provisioning, monkeypatch)
    # When it relays, Then the accounts share the window in turns, as the probe's outlook deals
    # them, from one read: no probe, no take per account
    first = relay(dbs, fair)
    assert Counter(j.job_id in b for j in first) == {True: 2, False: 2}
    assert [j.job_id in b for j in first] in ([False, True] * 2, [True, False] * 2)
    assert len(reads_of(statements)) == 1
    # And the rest waits for room, the outbox not emptied
    assert not fair.outbox_emptied
    assert sorted(i for i in a + b if dbs.jobs.get(i).status == "pending") == sorted(
        set(a + b) - {j.job_id for j in first})


def test_a_few_jobs_read_at_once_keep_each_accounts_pause_and_the_batch(dbs):
    # Given a publisher whose last pass emptied the outbox, and account A paused
    InstanceStore(dbs.provisioning).ensure_seeded(dbs.settings)
    pauses = fleet_pauses(dbs)
    fair = FairShare(window=None)
    relay(dbs, fair)
    pauses.pause(ACCOUNT, "A")
    a, b, c = submit(dbs, "A", 2), submit(dbs, "B", 3), submit(dbs, None, 2, queue="other")
    # When it relays with a batch of 4, Then A's jobs wait; the queues take turns in the batch
    # (B's oldest first on its queue), and a job left over stays pending, unchanged
    first = [j.job_id for j in relay(dbs, fair, batch=4)]
    assert len(first) == 4 and not set(first) & set(a)
    assert [i for i in first if i in b] == b[:len([i for i in first if i in b])]
    assert not fair.outbox_emptied
    # And the next passes relay the rest but A's, which goes once resumed
    rest = relay(dbs, fair) + relay(dbs, fair)
    assert sorted(first + [j.job_id for j in rest]) == sorted(b + c)
    assert all(dbs.jobs.get(i).status == "pending" and dbs.jobs.get(i).attempts == 0 for i in a)
    pauses.resume(ACCOUNT, "A")
    assert [j.job_id for j in relay(dbs, fair)] == a


def test_jobs_read_at_once_are_published_with_their_values_as_stored(dbs, monkeypatch):
    # Given a publisher whose last pass emptied the outbox, then jobs of an account named with a
    # quote, one with awkward arguments (quotes, backslashes, escapes, non-ASCII, a big number)
    from tests.contract.test_job_ownership import AWKWARD_ARGUMENTS
    fair = FairShare(window=None)
    relay(dbs, fair)
    account = "o'neil \\ é"
    odd, plain = dbs.jobs.submit_jobs([NewJob("noop", AWKWARD_ARGUMENTS, "default", 7, account=account),
                                       NewJob("noop", "{}", "default", 3, account=account)])
    statements = statements_of(dbs.provisioning, monkeypatch)
    # When it relays, Then both are read in the one read, each with its values as stored
    seen = relay(dbs, fair)
    assert len(reads_of(statements)) == 1
    assert [tuple(j) for j in seen] == [
        (odd.job_id, "noop", AWKWARD_ARGUMENTS, "default", 0, 7, None, None),
        (plain.job_id, "noop", "{}", "default", 0, 3, None, None)]
    assert all(type(j.job_id) is int and type(j.max_attempts) is int for j in seen)
    assert account_of(dbs, [odd.job_id, plain.job_id]) == [account, account]


def test_as_many_jobs_as_one_read_takes_are_a_backlog_read_by_the_probe(dbs, monkeypatch):
    # Given a publisher whose last pass emptied the outbox, then as many jobs as the one read
    # takes (of two accounts)
    from enstratus_workers.db.outbox import _FEW_READ
    fair = FairShare(window=None)
    relay(dbs, fair)
    ids = submit(dbs, "A", _FEW_READ - 2) + submit(dbs, "B", 2)
    statements = statements_of(dbs.provisioning, monkeypatch)
    # When it relays, Then the one read found a backlog, and the probe and a take per account
    # read it: every job goes once, B's two among the first turns, not after A's backlog
    first = [j.job_id for j in relay(dbs, fair, batch=500)]
    assert sorted(first) == sorted(ids)
    assert len(reads_of(statements)) == 1 + 1 + 2
    assert {first.index(i) for i in ids[-2:]} <= set(range(4))


@pytest.mark.timeout(60)
def test_two_publishers_with_a_backlog_of_several_accounts_never_relay_a_job_twice(dbs):
    # Given 600 pending jobs of six accounts and two publishers, each with its own turns
    ids = [i for n in range(6) for i in submit(dbs, f"acct-{n}", 100)]
    published: list[list[int]] = [[], []]
    errors = []

    def publisher(k):
        fair = FairShare(window=None)
        try:
            for _ in range(200):
                seen = relay(dbs, fair, batch=37)
                published[k].extend(j.job_id for j in seen)
                if not seen and dbs.jobs.counts()["pending"] == 0:
                    return
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # When both relay at once until the outbox is empty
    threads = [threading.Thread(target=publisher, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    # Then every job was relayed exactly once, and each is queued
    assert not errors
    both = published[0] + published[1]
    assert sorted(both) == sorted(ids) and len(set(both)) == len(both)
    assert dbs.jobs.counts()["queued"] == 600


def test_starting_and_finishing_work_wakes_the_publishers(tmp_path):
    # Given a job store whose rings are counted
    from enstratus_workers.db.jobs import JobStore

    dbs = open_databases(WorkerSettings(), Layout(tmp_path))
    rings = []
    try:
        store = JobStore(dbs.provisioning, on_pending=lambda: rings.append("ring"))
        (job,) = store.submit_jobs([NewJob("noop", "{}", "default", 3)])
        store.relay(FairShare(window=1), 500, lambda batch: None)
        rings.clear()
        # When its job is marked running, then recorded
        store.mark_started([Started(job.job_id, 1, "w", 1, "me")])
        store.record_outcomes([Outcome(job.job_id, 1, "succeeded", "w", 1, 2, None, None, "me")])
        # Then each rang the publishers: each made room in the queue's window
        assert rings == ["ring", "ring"]
    finally:
        dbs.close()
