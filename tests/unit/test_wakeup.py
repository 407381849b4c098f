"""The outbox's doorbell (jobs/wakeup.py): a committed job wakes the publisher, a flood of
wake-ups costs one outbox read per drain, and a missing publisher costs nothing."""

from __future__ import annotations

import threading
import time

import pytest

from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.jobs.wakeup import WAITER, Bell, Ringer, bell_address
from enstratus_workers.layout import Layout
from tests import servicehome as sh


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def _publisher_at(run_dir, name="p1") -> Bell:
    (run_dir / f"publisher@{name}.pid").write_text("1\n")   # how a ringer finds a publisher
    return Bell(run_dir, name)


@pytest.fixture
def bell(run_dir):
    b = _publisher_at(run_dir)
    yield b
    b.close()


@pytest.fixture
def ringer(run_dir):
    r = Ringer(run_dir)
    yield r
    r.close()


def test_a_ring_wakes_the_waiting_publisher_and_silence_times_out(bell, ringer):
    # Given nobody rings: the wait is the safety net's, and says so
    assert bell.wait(0.05) is False
    # When a ringer rings while the publisher waits
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(bell.wait(10)))
    waiter.start()
    time.sleep(0.05)
    ringer.ring()
    waiter.join(10)
    # Then the wait ended with the ring, long before its timeout
    assert woke == [True]


def test_a_ring_sent_before_the_wait_is_not_lost(bell, ringer):
    ringer.ring()                      # the publisher is busy relaying, not waiting
    assert bell.wait(0) is True        # it sees the ring as soon as it waits
    assert bell.wait(0) is False       # and only once


def test_a_flood_of_rings_is_one_wake_up(bell, ringer):
    # When 10,000 submits ring while the publisher is busy (more than its socket buffer holds)
    for _ in range(10_000):
        ringer.ring()
    # Then it wakes once, drains them all, and is quiet after (one outbox read, not 10,000)
    assert bell.wait(0) is True
    assert bell.wait(0) is False
    assert bell.rings == 1


def test_a_wake_up_says_whether_it_was_room_rings_only(bell, ringer):
    # Room rings alone (jobs started or finished) are a wake-up of room only
    ringer.ring(room=True)
    ringer.ring(room=True)
    assert bell.wait(0) is True and bell.only_room is True
    # One work ring among them (a job made pending) makes the wake-up one for work
    ringer.ring(room=True)
    ringer.ring()
    ringer.ring(room=True)
    assert bell.wait(0) is True and bell.only_room is False
    # and a stop request (the bell's own ring) is never room
    bell.ring()
    assert bell.wait(0) is True and bell.only_room is False


def test_every_publisher_of_the_install_is_rung_and_no_other_install(tmp_path):
    mine, other = tmp_path / "a" / "run", tmp_path / "b" / "run"
    mine.mkdir(parents=True)
    other.mkdir(parents=True)
    bells = [_publisher_at(mine, "p1"), _publisher_at(mine, "p2")]
    stranger = _publisher_at(other, "p1")
    ringer = Ringer(mine)
    try:
        assert bell_address(mine, "p1") != bell_address(other, "p1")
        ringer.ring()
        assert [b.wait(1) for b in bells] == [True, True]
        assert stranger.wait(0.05) is False
    finally:
        for b in (*bells, stranger):
            b.close()
        ringer.close()


def test_ringing_a_publisher_that_is_gone_is_harmless(run_dir):
    (run_dir / "publisher@gone.pid").write_text("1\n")   # a pid file left behind, nobody bound
    ringer = Ringer(run_dir)
    try:
        ringer.ring()
        ringer.ring()
    finally:
        ringer.close()


def _counting_rescans(ringer, monkeypatch) -> list:
    scans = []
    rescan = ringer._rescan
    monkeypatch.setattr(ringer, "_rescan", lambda now: (scans.append(now), rescan(now)))
    return scans


def test_a_waiter_coming_and_going_does_not_make_the_publisher_ringer_look_again(run_dir, bell, ringer,
                                                                                   monkeypatch):
    # Given a publisher ringer that has looked once (the bells directory made already)
    Bell(run_dir, "w0", WAITER).announce().close()
    ringer.ring()
    assert bell.wait(1) is True
    scans = _counting_rescans(ringer, monkeypatch)
    before = run_dir.stat().st_mtime_ns
    # When waiters announce themselves and go, between rings of the publisher
    for i in range(5):
        waiter = Bell(run_dir, f"w{i}", WAITER).announce()
        assert (run_dir / "bells" / f"waiter@w{i}.bell").exists()
        ringer.ring()
        waiter.close()
        ringer.ring()
    # Then the run directory did not change, the ringer never looked again, and the publisher was rung
    assert run_dir.stat().st_mtime_ns == before
    assert scans == []
    assert bell.wait(1) is True
    assert not list(run_dir.glob("*.bell")) and not list((run_dir / "bells").iterdir())


@pytest.mark.parametrize("bells_dir_first", [False, True], ids=["no-bells-dir-yet", "bells-dir-there"])
def test_a_waiter_ringer_reaches_a_waiter_announced_after_it_rang(run_dir, bells_dir_first):
    if bells_dir_first:
        Bell(run_dir, "earlier", WAITER).announce().close()
    ringer = Ringer(run_dir, WAITER)
    try:
        # Given the recorder's ringer rang with no waiter there (nor, maybe, the bells directory)
        ringer.ring()
        assert (run_dir / "bells").is_dir() is bells_dir_first
        # When a waiter announces itself / Then the next ring reaches it
        waiter = Bell(run_dir, "w1", WAITER).announce()
        try:
            ringer.ring()
            assert waiter.wait(1.0) is True
        finally:
            waiter.close()
    finally:
        ringer.close()


def test_a_waiter_ringer_rings_each_waiter_present_and_no_file_that_only_looks_like_one(run_dir):
    # Given waiters that come and go, and files in the bells directory that are not waiters' bells
    ringer = Ringer(run_dir, WAITER)
    first = Bell(run_dir, "w1", WAITER).announce()
    for stray in ("waiter@w9.bell.tmp", "other@w9.bell", "waiter@.bel", "w9.bell"):
        (run_dir / "bells" / stray).write_text("")
    try:
        for n in range(2, 5):
            # When one more announces itself and the previous one leaves, and the ringer rings
            second = Bell(run_dir, f"w{n}", WAITER).announce()
            first.close()
            ringer.ring_done([n])
            # Then the waiter there is rung, and the ringer knows no other address
            assert second.wait(1.0) is True
            assert ringer._addresses == [second.address]
            first = second
    finally:
        first.close()
        ringer.close()


def test_the_daemons_make_the_bells_directory_so_a_waiter_finds_it_theirs(tmp_path):
    # Given an install whose daemons made their directories (as each does at its start)
    layout = Layout(tmp_path / "home")
    layout.ensure_dirs()
    bells = layout.run_dir / "bells"
    # Then the waiters' directory is there, made by them (not by a first waiter, maybe root)
    assert bells.is_dir() and bells.stat().st_uid == layout.run_dir.stat().st_uid
    before = layout.run_dir.stat().st_mtime_ns
    # And a waiter announcing itself leaves the run directory as it was
    waiter = Bell(layout.run_dir, "w1", WAITER).announce()
    waiter.close()
    assert layout.run_dir.stat().st_mtime_ns == before


def test_a_waiter_without_a_run_directory_makes_none_and_leaves_no_socket_bound(tmp_path):
    missing = tmp_path / "run"
    waiter = Bell(missing, "w1", WAITER)
    with pytest.raises(OSError):
        waiter.announce()
    assert not missing.exists()
    Bell(missing, "w1", WAITER).close()   # its address is free again: the failed bell's socket is closed


@pytest.fixture
def store_and_bell(tmp_path):
    """An install's job store, and a publisher's bell its ringer finds."""
    from enstratus_workers.config import load_settings

    layout = Layout(sh.make_home(tmp_path))
    layout.ensure_dirs()
    dbs = open_databases(load_settings(layout).worker, layout)
    bell = _publisher_at(layout.run_dir)
    yield dbs, bell
    bell.close()
    dbs.close()


def test_submitting_a_job_rings_the_publisher_after_the_commit(store_and_bell):
    dbs, bell = store_and_bell
    seen = []
    # When a job is submitted, then a bulk of them
    for submit in (lambda: dbs.jobs.submit(NewJob("noop", "{}", "default", 1)),
                   lambda: dbs.jobs.submit_many([NewJob("noop", "{}", "default", 1)] * 3)):
        submit()
        # Then the publisher is woken, and the rows it will read are committed already
        assert bell.wait(5) is True
        seen.append(dbs.jobs.counts()["pending"])
    assert seen == [1, 4]


def test_a_wait_for_an_outcome_is_woken_by_its_recording_not_by_the_safety_net(tmp_path, monkeypatch):
    from enstratus_workers.config import load_settings
    from enstratus_workers.jobs import submit as submit_mod
    from enstratus_workers.jobs.values import Outcome

    home = sh.make_home(tmp_path)
    layout = Layout(home)
    layout.ensure_dirs()
    dbs = open_databases(load_settings(layout).worker, layout)
    # Given a safety net so long that only a ring can end the wait in time
    monkeypatch.setattr(submit_mod, "WAIT_SAFETY_NET_S", 30.0)
    job, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 1))
    done = []
    rows_read = []
    get = dbs.jobs.get
    monkeypatch.setattr(dbs.jobs, "get", lambda job_id: (rows_read.append(job_id), get(job_id))[1])
    try:
        waiter = threading.Thread(target=lambda: done.append(
            submit_mod.wait_for(dbs, job.job_id, timeout=20, run_dir=layout.run_dir)))
        waiter.start()
        deadline = time.monotonic() + 5
        while not list((layout.run_dir / "bells").glob("waiter@*.bell")) and time.monotonic() < deadline:
            time.sleep(0.01)
        # When the subscriber's recorder writes the job's outcome
        now = int(time.time() * 1000)
        dbs.jobs.record_outcomes([Outcome(job_id=job.job_id, attempt=1, status="succeeded", worker="w",
                                          owner="o", start_ms=now, end_ms=now, result="1", error=None)])
        waiter.join(10)
        # Then the wait returned with it at once, and took its announcement away; it read the
        # row when it began (no bell announced before its submit) and once more, at the ring
        assert not waiter.is_alive() and done[0].status == "succeeded" and done[0].result == "1"
        assert not list((layout.run_dir / "bells").glob("waiter@*.bell"))
        assert rows_read == [job.job_id, job.job_id]
    finally:
        dbs.close()


@pytest.fixture
def waiting(tmp_path, monkeypatch):
    """A store with bells, whose ``get`` reads are counted (``reads``), a safety net so long that
    only a ring ends a wait in time, and ``record(job_id, status, attempt)`` as a recorder would."""
    from types import SimpleNamespace

    from enstratus_workers.config import load_settings
    from enstratus_workers.jobs import submit as submit_mod
    from enstratus_workers.jobs.values import Outcome

    layout = Layout(sh.make_home(tmp_path))
    layout.ensure_dirs()
    dbs = open_databases(load_settings(layout).worker, layout)
    monkeypatch.setattr(submit_mod, "WAIT_SAFETY_NET_S", 30.0)
    reads = []
    get = dbs.jobs.get
    monkeypatch.setattr(dbs.jobs, "get", lambda job_id: (reads.append(job_id), get(job_id))[1])

    def record(job_id, status="succeeded", attempt=1):
        now = int(time.time() * 1000)
        dbs.jobs.record_outcomes([Outcome(job_id=job_id, attempt=attempt, status=status, worker="w",
                                          owner="o", start_ms=now, end_ms=now, result="1", error=None)])
    try:
        yield SimpleNamespace(layout=layout, dbs=dbs, reads=reads, record=record, submit_mod=submit_mod)
    finally:
        dbs.close()


def test_a_wait_announced_before_its_submit_waits_first_and_misses_no_outcome(waiting):
    layout, dbs, reads, record, submit_mod = (waiting.layout, waiting.dbs, waiting.reads, waiting.record,
                                              waiting.submit_mod)
    # Given a wait's bell announced before its job's submit (as submit --wait does)
    bell = submit_mod.outcome_bell(layout.run_dir)
    job, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 1))
    # When the job finishes before the wait even begins
    record(job.job_id)
    # Then the wait returns at once (the ring waited in the bell), with the job as recorded
    started = time.monotonic()
    done = submit_mod.wait_for(dbs, job.job_id, timeout=20, bell=bell)
    assert done.status == "succeeded" and time.monotonic() - started < 5 and reads == [job.job_id]
    # Given another, when it finishes while the wait waits
    reads.clear()
    bell = submit_mod.outcome_bell(layout.run_dir)
    job, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 1))
    result = []
    waiter = threading.Thread(target=lambda: result.append(
        submit_mod.wait_for(dbs, job.job_id, timeout=20, bell=bell)))
    waiter.start()
    time.sleep(0.2)
    # Then it had not read the row before the outcome came, and returned once it came
    assert reads == []
    record(job.job_id)
    waiter.join(10)
    assert not waiter.is_alive() and result[0].status == "succeeded" and reads == [job.job_id]
    assert not list((layout.run_dir / "bells").glob("waiter@*.bell"))


def test_a_waiter_reads_its_row_only_for_a_ring_that_names_its_job(waiting):
    from enstratus_workers.jobs.values import Outcome

    layout, dbs, reads, record, submit_mod = (waiting.layout, waiting.dbs, waiting.reads, waiting.record,
                                              waiting.submit_mod)
    # Given a waiter on its job, and other jobs of the host
    bell = submit_mod.outcome_bell(layout.run_dir)
    mine, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 3))
    others = [dbs.jobs.submit(NewJob("noop", "{}", "default", 1))[0] for _ in range(3)]
    result = []
    waiter = threading.Thread(target=lambda: result.append(
        submit_mod.wait_for(dbs, mine.job_id, timeout=20, bell=bell)))
    waiter.start()
    # When the others' outcomes are recorded, one by one and together, and a retry of its own
    for other in others[:2]:
        record(other.job_id)
    record(mine.job_id, status="pending")   # failed, to be retried: not what it waits for
    dbs.jobs.record_outcomes([Outcome(job_id=others[2].job_id, attempt=1, status="failed", worker="w",
                                      owner="o", start_ms=1, end_ms=2, result=None, error="x")])
    time.sleep(0.3)
    # Then it has not read its row: no ring named its job finished
    assert waiter.is_alive() and reads == []
    # When its own outcome is recorded, Then it reads the row once and returns with it
    record(mine.job_id, attempt=2)
    waiter.join(10)
    assert not waiter.is_alive() and result[0].status == "succeeded" and reads == [mine.job_id]


def test_an_outcome_ring_names_its_jobs_and_a_plain_or_foreign_ring_names_none(run_dir):
    import socket

    from enstratus_workers.jobs.wakeup import DONE, RING_MAX

    waiter = Bell(run_dir, "w1", WAITER).announce()
    ringer = Ringer(run_dir, WAITER)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # A ring naming jobs, and two before one wake-up: their jobs together
        ringer.ring_done([7, 12])
        assert waiter.wait(1) and waiter.recorded == {7, 12}
        ringer.ring_done([3])
        ringer.ring_done([4, 5])
        assert waiter.wait(1) and waiter.recorded == {3, 4, 5}
        # More than fit in one ring, or none: a plain ring, which names none (every waiter reads)
        ringer.ring_done(range(10**9, 10**9 + RING_MAX // 5))
        assert waiter.wait(1) and waiter.recorded is None
        ringer.ring_done([])
        assert waiter.wait(1) and waiter.recorded is None
        # A plain ring among named ones: none named
        ringer.ring_done([1])
        ringer.ring()
        assert waiter.wait(1) and waiter.recorded is None
        # Anything that is not a list of ids, and anything too long to be ours: a plain ring
        for junk in (b"", b"1,,2", b"-1", b"1,x", b" 1", b"1.5", "١".encode(), b"9" * 20,
                     b"1" * (RING_MAX + 100)):
            sender.sendto(DONE + junk, waiter.address)
            assert waiter.wait(1) and waiter.recorded is None, junk
    finally:
        sender.close()
        ringer.close()
        waiter.close()


def test_a_waiter_ringer_passes_the_recorded_jobs_on_to_its_hooks(run_dir):
    """The broker's ring of other hosts' waiters (``mq/amqp_wake.py``) is attached here: it gets
    the jobs of every outcome ring, whether or not this host has a waiter, and no plain ring."""
    ringer = Ringer(run_dir, WAITER)
    passed, plain = [], []
    ringer.also_done(passed.append)
    ringer.also(lambda: plain.append(1))
    try:
        ringer.ring_done(iter([4, 9]))   # (an iterator: read once, for the bells and the hooks)
        ringer.ring_done([])
        assert passed == [[4, 9], []] and plain == []
    finally:
        ringer.close()


def test_a_cancel_rings_this_hosts_subscribers_so_the_owner_looks_at_once(tmp_path):
    from enstratus_workers.config.settings import WorkerSettings
    from enstratus_workers.jobs.wakeup import SUBSCRIBER

    # Given a subscriber's bell (found through its pid file) and a running job
    layout = Layout(tmp_path)
    layout.ensure_dirs()
    (layout.run_dir / "subscriber@s1.pid").write_text("1\n")
    bell = Bell(layout.run_dir, "s1", SUBSCRIBER)
    dbs = open_databases(WorkerSettings(), layout)
    try:
        job, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 3))
        assert not bell.wait(0)
        # When the job is cancelled on this host / Then the bell rings
        dbs.jobs.cancel(job.job_id)
        assert bell.wait(2.0)
        # and a cancel that changes nothing (the job finished) does not
        dbs.jobs.cancel(job.job_id)
        assert not bell.wait(0.2)
    finally:
        dbs.close()
        bell.close()



def test_a_cancel_made_without_a_broker_ringer_asks_this_hosts_publishers_to_pass_it_on(tmp_path):
    from enstratus_workers.config.settings import WorkerSettings
    from enstratus_workers.jobs.wakeup import SUBSCRIBER

    # Given a publisher's and a subscriber's bell, and a store as the CLI opens it (no broker)
    layout = Layout(tmp_path)
    layout.ensure_dirs()
    publisher = _publisher_at(layout.run_dir)
    (layout.run_dir / "subscriber@s1.pid").write_text("1\n")
    owner = Bell(layout.run_dir, "s1", SUBSCRIBER)
    dbs = open_databases(WorkerSettings(), layout)
    try:
        job, _ = dbs.jobs.submit(NewJob("noop", "{}", "default", 3))
        assert publisher.wait(2.0) and not publisher.cancelled   # the submit's work ring
        # When the job is cancelled
        dbs.jobs.cancel(job.job_id)
        # Then the subscriber is rung, and the publisher gets a cancel ring, which asks for no
        # relay pass (only_room) and names no recorded job
        assert owner.wait(2.0)
        assert publisher.wait(2.0) and publisher.cancelled and publisher.only_room
        assert publisher.recorded == set()
        # and a ring after it is as it was
        dbs.ringers[0].ring()
        assert publisher.wait(2.0) and not publisher.cancelled and not publisher.only_room
    finally:
        dbs.close()
        owner.close()
        publisher.close()


def test_a_cancel_ring_among_work_rings_still_asks_for_a_pass(bell, ringer):
    ringer.ring_cancel()
    ringer.ring(room=True)
    assert bell.wait(0) and bell.cancelled and bell.only_room
    ringer.ring_cancel()
    ringer.ring()
    assert bell.wait(0) and bell.cancelled and not bell.only_room


def test_a_subscribers_ringer_with_a_broker_ring_does_not_also_ask_the_publisher(run_dir):
    from enstratus_workers.jobs.wakeup import SUBSCRIBER

    owners = Ringer(run_dir, SUBSCRIBER)
    via_publisher, via_broker = [], []
    try:
        owners.otherwise(lambda: via_publisher.append(1))
        owners.ring()
        assert via_publisher == [1]          # no broker ringer in this process: the publisher's
        owners.also(lambda: via_broker.append(1))
        owners.ring()
        assert via_broker == [1] and via_publisher == [1]   # one is attached: it alone
    finally:
        owners.close()
