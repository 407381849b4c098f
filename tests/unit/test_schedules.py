"""The publisher's schedules: one job per account per interval slot, however many publishers run,
never piling up behind a job that is not done, and no I/O at all on a tick with nothing due."""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from enstratus_workers.cloud.servers import SERVER_BUCKET, indexes
from enstratus_workers.config.settings import (
    KMClientSettings,
    MQSettings,
    PersistenceSettings,
    ProvisioningSettings,
    Schedule,
    Secret,
    Settings,
    WorkerSettings,
)
from enstratus_workers.daemons.publisher.schedules import (
    Scheduler,
    job_key,
    retry_ms,
    slot_of,
)
from enstratus_workers.db import Outcome, Started, open_databases
from enstratus_workers.layout import Layout
from enstratus_workers.persist.routing import Persistence
from enstratus_workers.persist.sqlite import SqliteStore

MINUTE = 60_000
T0 = 1_700_000_000_000 // MINUTE * MINUTE   # the start of a minute slot (and of a 15 s one)
SCHEDULES = (Schedule("server.sync", 60.0), Schedule("firewall.sync", 15.0, arguments='{"full":true}'))


class CountingStore(Persistence):
    """The real routing layer over a real SQLite store, counting the reads that reach it."""

    def __init__(self, path):
        super().__init__({"sqlite": lambda: SqliteStore(path)}, lambda bucket: "sqlite")
        self.reads = 0

    def _get(self, bucket, key):
        self.reads += 1
        return super()._get(bucket, key)

    def _list_keys(self, bucket):
        self.reads += 1
        return super()._list_keys(bucket)

    def _query(self, bucket, index, lo, hi):
        self.reads += 1
        return super()._query(bucket, index, lo, hi)


@pytest.fixture
def home(tmp_path):
    return tmp_path


def make_settings(home, **worker) -> Settings:
    worker = {"provisioning_url": Secret("sqlite:///data/prov.db"),
              "analytics_url": Secret("sqlite:///data/anal.db"), "schedules": SCHEDULES, **worker}
    return Settings(home=home, mq=MQSettings(), worker=WorkerSettings(**worker),
                    persistence=PersistenceSettings(sqlite_path=home / "persist.db"),
                    km_client=KMClientSettings(), provisioning=ProvisioningSettings())


@pytest.fixture
def settings(home):
    return make_settings(home)


@pytest.fixture
def dbs(settings, home):
    d = open_databases(settings.worker, Layout(home))
    yield d
    d.close()


@pytest.fixture
def store(home):
    s = CountingStore(home / "persist.db")
    yield s
    s.close()


def put_server(store, server_id, account, state="running"):
    data = {"server_id": server_id, "account": account, "provider": "local", "state": state}
    store.put(SERVER_BUCKET, server_id, data, indexes(data))


def scheduled(dbs) -> list[dict]:
    with dbs.provisioning.connect() as conn:
        rows = conn.execute(sa.text("SELECT action, arguments, queue, status, idempotency_key, account "
                                    "FROM enstratus_job ORDER BY job_id")).mappings().all()
    return [dict(r, arguments=json.loads(r["arguments"])) for r in rows]


def finish(dbs, status="succeeded") -> None:
    """Record an outcome for every job still active, as the subscriber would."""
    with dbs.provisioning.connect() as conn:
        ids = conn.execute(sa.text("SELECT job_id FROM enstratus_job "
                                   "WHERE status IN ('pending', 'queued', 'running')")).scalars().all()
    now = int(time.time() * 1000)
    dbs.jobs.record_outcomes([Outcome(i, 1, status, "w-test", now, now, None, None) for i in ids])


def test_slots_are_the_interval_windows_of_the_clock_and_name_the_job():
    assert slot_of(T0, 60) == T0 // MINUTE
    assert slot_of(T0 + 59_999, 60) == slot_of(T0, 60) and slot_of(T0 + 60_000, 60) == slot_of(T0, 60) + 1
    assert slot_of(T0 + 15_000, 15) == slot_of(T0, 15) + 1
    assert job_key("server.sync", "42", 7) == "sched:server.sync:42:7"
    assert retry_ms(15) == 1_500 and retry_ms(1) == 1_000 and retry_ms(3600) == 30_000


def test_the_first_tick_submits_each_schedule_for_every_account(settings, home, dbs, store):
    # Given servers of accounts 7 and 8 (two of them), a terminated one of 9, a configured account
    put_server(store, "srv-1", "7")
    put_server(store, "srv-2", "8")
    put_server(store, "srv-3", "8")
    put_server(store, "srv-4", 9, state="terminated")
    scheduler = Scheduler(make_settings(home, schedule_accounts=("42",)), Layout(home), dbs, store)

    # When the publisher ticks
    created = scheduler.tick(T0 + 5)

    # Then every account got one job of each schedule, keyed by its slot, with its arguments
    assert created == 8
    jobs = scheduled(dbs)
    assert sorted((j["action"], j["arguments"]["account"]) for j in jobs) == sorted(
        (a, acct) for a in ("server.sync", "firewall.sync") for acct in ("7", "8", "9", "42"))
    sync_7 = next(j for j in jobs if j["action"] == "server.sync" and j["arguments"]["account"] == "7")
    assert sync_7["idempotency_key"] == f"sched:server.sync:7:{T0 // MINUTE}"
    assert sync_7["arguments"] == {"account": "7"} and sync_7["queue"] == "default"
    fw_42 = next(j for j in jobs if j["action"] == "firewall.sync" and j["arguments"]["account"] == "42")
    assert fw_42["arguments"] == {"account": "42", "full": True}
    assert fw_42["idempotency_key"] == f"sched:firewall.sync:42:{T0 // 15_000}"
    assert all(j["status"] == "pending" for j in jobs)

    # And ticking again in the same slots creates nothing
    assert scheduler.tick(T0 + 10_000) == 0 and len(scheduled(dbs)) == 8


def test_each_schedule_runs_once_per_interval(settings, home, dbs, store):
    put_server(store, "srv-1", "7")
    scheduler = Scheduler(settings, Layout(home), dbs, store)
    # When the publisher ticks every 5 s for two minutes, the jobs finishing in between
    for t in range(T0, T0 + 2 * MINUTE, 5_000):
        scheduler.tick(t)
        finish(dbs)
    # Then server.sync ran once per minute and firewall.sync once per 15 s
    actions = [j["action"] for j in scheduled(dbs)]
    assert actions.count("server.sync") == 2 and actions.count("firewall.sync") == 8
    assert scheduler.created == 10


def test_two_publishers_on_one_database_submit_each_slot_once(settings, home, store):
    # Given two publishers, each with its own connections to the same SQLite database
    for i in range(6):
        put_server(store, f"srv-{i}", str(i % 3))
    layout = Layout(home)
    dbs_a, dbs_b = open_databases(settings.worker, layout), open_databases(settings.worker, layout)
    a = Scheduler(settings, layout, dbs_a, store)
    b = Scheduler(settings, layout, dbs_b, store)
    try:
        for slot in range(4):
            now = T0 + slot * MINUTE
            # When both tick at once, at the start of each minute, and again a little later
            errors = []

            def run(s, t):
                try:
                    s.tick(t)
                except Exception as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(s, now + d)) for s in (a, b) for d in (0, 3)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert not errors
            # ... and the other publisher ticks once more after the jobs finished (same slots)
            finish(dbs_a)
            b.tick(now + 14_000)
            a.tick(now + 14_500)
            finish(dbs_a)
        # Then every (action, account, slot) has exactly one job
        keys = [j["idempotency_key"] for j in scheduled(dbs_a)]
        assert len(keys) == len(set(keys))
        syncs = [k for k in keys if k.startswith("sched:server.sync:")]
        assert len(syncs) == 4 * 3
        assert a.created + b.created == len(keys) == 4 * 3 + 4 * 3  # 15 s slots: one per minute here
    finally:
        dbs_a.close()
        dbs_b.close()


def test_an_account_whose_previous_job_is_not_done_is_skipped_not_piled_up(settings, home, dbs, store):
    put_server(store, "srv-7", "7")
    put_server(store, "srv-8", "8")
    only_sync = make_settings(home, schedules=(Schedule("server.sync", 60.0),))
    scheduler = Scheduler(only_sync, Layout(home), dbs, store)
    assert scheduler.tick(T0) == 2
    jobs = {j["arguments"]["account"]: j for j in scheduled(dbs)}

    # Given account 7's job running (picked up by a worker) and 8's still pending
    with dbs.provisioning.connect() as conn:
        job_7 = conn.execute(sa.text("SELECT job_id FROM enstratus_job WHERE idempotency_key = :k"),
                             {"k": jobs["7"]["idempotency_key"]}).scalar_one()
    dbs.jobs.mark_started([Started(job_7, 1, "w-test", T0)])

    # When the next minute begins: nothing is submitted, for either account
    assert scheduler.tick(T0 + MINUTE) == 0
    # nor by a publisher that just started (the check is in the database, not in memory)
    assert Scheduler(only_sync, Layout(home), dbs, store).tick(T0 + MINUTE + 1) == 0
    assert len(scheduled(dbs)) == 2

    # When account 7's job finishes, 7 is scheduled at the next look within the same minute
    dbs.jobs.record_outcomes([Outcome(job_7, 1, "succeeded", "w-test", T0, T0 + 1, None, None)])
    assert scheduler.tick(T0 + MINUTE + 100) == 0          # not due for a look yet
    assert scheduler.tick(T0 + MINUTE + retry_ms(60)) == 1
    newest = scheduled(dbs)[-1]
    assert newest["arguments"] == {"account": "7"}
    assert newest["idempotency_key"] == f"sched:server.sync:7:{T0 // MINUTE + 1}"
    # and 8, whose first job never even started, is still not given a second one
    assert [j["arguments"]["account"] for j in scheduled(dbs)].count("8") == 1


def test_a_tick_with_nothing_due_does_no_io(settings, home, dbs, store):
    put_server(store, "srv-1", "7")
    scheduler = Scheduler(settings, Layout(home), dbs, store)
    statements = []
    sa.event.listen(dbs.provisioning, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert scheduler.tick(T0) == 2 and statements and store.reads
    statements.clear()
    reads = store.reads

    # When the publisher ticks 20 times a second for the rest of the 15 s slot
    started = time.perf_counter()
    for i in range(1, 300):
        assert scheduler.tick(T0 + i * 50) == 0
    elapsed = time.perf_counter() - started

    # Then no statement reached the database and nothing was read from the persistence layer
    assert statements == [] and store.reads == reads
    assert elapsed < 0.5, f"300 idle ticks took {elapsed:.3f}s"


def test_a_skipped_account_costs_one_query_per_look_not_per_tick(home, dbs, store):
    put_server(store, "srv-1", "7")
    settings = make_settings(home, schedules=(Schedule("server.sync", 60.0),))
    scheduler = Scheduler(settings, Layout(home), dbs, store)
    scheduler.tick(T0)                   # a job that stays pending all along
    statements = []
    sa.event.listen(dbs.provisioning, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for t in range(T0 + MINUTE, T0 + 2 * MINUTE, 50):   # a whole minute of ticks at 20/s
        scheduler.tick(t)
    looks = [s for s in statements if "idempotency_key" in s]
    assert len(looks) == MINUTE // retry_ms(60) and len(scheduled(dbs)) == 1


def test_new_accounts_are_picked_up_when_the_accounts_are_read_again(home, dbs, store):
    put_server(store, "srv-1", "7")
    settings = make_settings(home, schedules=(Schedule("server.sync", 60.0),))
    scheduler = Scheduler(settings, Layout(home), dbs, store, accounts_refresh_s=120)
    assert scheduler.tick(T0) == 1
    finish(dbs)
    put_server(store, "srv-2", "8")
    reads = store.reads
    assert scheduler.tick(T0 + MINUTE) == 1            # accounts not read again yet: 7 only
    assert store.reads == reads
    finish(dbs)
    assert scheduler.tick(T0 + 2 * MINUTE) == 2        # read again: 7 and 8
    assert store.reads == reads + 2                    # one listing, one read of the new server


def test_by_default_accounts_are_read_again_at_the_shortest_interval(settings, home, dbs, store):
    put_server(store, "srv-1", "7")
    scheduler = Scheduler(settings, Layout(home), dbs, store)
    assert scheduler.tick(T0) == 2
    finish(dbs)
    # Given a server of a new account, launched after the first tick
    put_server(store, "srv-2", "8")
    # Then the next 15 s slot schedules it already (firewall.sync for 7 and 8)
    assert scheduler.tick(T0 + 15_000) == 2
    assert sorted(j["arguments"]["account"] for j in scheduled(dbs)[-2:]) == ["7", "8"]


def test_an_unreadable_persistence_layer_is_logged_and_retried_not_raised(home, dbs, caplog):
    broken = CountingStore(home / "persist.db")
    broken.close()
    settings = make_settings(home, schedules=(Schedule("server.sync", 60.0),), schedule_accounts=("42",))
    scheduler = Scheduler(settings, Layout(home), dbs, broken)
    assert scheduler.tick(T0) == 0
    assert "cannot read accounts or jobs" in caplog.text and scheduled(dbs) == []


def test_without_schedules_nothing_is_opened_or_submitted(home, dbs):
    scheduler = Scheduler(make_settings(home, schedules=()), Layout(home), dbs)
    assert scheduler.persistence is None
    assert scheduler.tick(T0) == 0 and scheduled(dbs) == []
    scheduler.close()


def test_a_scheduler_opens_and_closes_its_own_persistence_when_given_none(settings, home, dbs, store):
    put_server(store, "srv-1", "7")
    scheduler = Scheduler(settings, Layout(home), dbs)
    try:
        assert scheduler.tick(T0) == 2
    finally:
        scheduler.close()
    assert scheduler.persistence is None


def test_one_unreadable_server_object_does_not_hold_back_the_other_accounts(home, dbs, store, caplog):
    # Given servers of accounts 7 and 8, and one whose object cannot be read (siblings in Riak)
    from enstratus_workers.persist.base import SiblingsError
    put_server(store, "srv-1", "7")
    put_server(store, "srv-bad", "9")
    put_server(store, "srv-2", "8")
    real_get = store._get
    store._get = lambda bucket, key: (_ for _ in ()).throw(SiblingsError("2 siblings")) \
        if key == "srv-bad" else real_get(bucket, key)
    settings = make_settings(home, schedules=(Schedule("server.sync", 60.0),))
    scheduler = Scheduler(settings, Layout(home), dbs, store)
    # When the publisher ticks
    # Then the readable accounts get their job, and the bad object is named in the log
    assert scheduler.tick(T0 + 5) == 2
    assert sorted(j["arguments"]["account"] for j in scheduled(dbs)) == ["7", "8"]
    assert "cannot read server srv-bad" in caplog.text
    # And once it reads again, its account is picked up at the next refresh
    store._get = real_get
    finish(dbs)   # the slot's jobs done: no account waits for its previous one
    assert scheduler.tick(T0 + MINUTE + 5) == 3
    assert sorted(j["arguments"]["account"] for j in scheduled(dbs)) == ["7", "7", "8", "8", "9"]
