"""One owner per attempt (db/jobs.py's rule), exact identities and the schema migration,
on the embedded SQLite and a real MariaDB."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import Outcome, Started, migrate, open_databases
from enstratus_workers.layout import Layout
from tests.contract.test_jobs_db import dbs, job  # noqa: F401  (the fixture, on both databases)
from tests.fixtures import legacy_schema
from tests.statements_seen import statements_of

A, B = "subscriber@a:101:aaaa", "subscriber@b:202:bbbb"


def _queued(dbs, n=1):
    ids = [dbs.jobs.submit(job())[0].job_id for _ in range(n)]
    dbs.jobs.relay_pending(100, lambda batch: None)
    return ids


def _outcome(job_id, owner, attempt=1, status="succeeded", end_ms=2000):
    return Outcome(job_id, attempt, status, "w", 1000, end_ms, "null", None, owner)


def test_two_owners_recording_the_same_attempt_apply_exactly_one(dbs):
    # Given a queued job whose attempt 1 two subscribers ran (a duplicate message)
    (jid,) = _queued(dbs)
    # When both record their outcome of attempt 1
    first = dbs.jobs.record_outcomes([_outcome(jid, A)])
    second = dbs.jobs.record_outcomes([_outcome(jid, B, end_ms=2001)])
    # Then only the first took effect, and the row is its outcome
    assert first == [_outcome(jid, A)] and second == []
    row = dbs.jobs.get(jid)
    assert (row.status, row.owner, row.end_timestamp) == ("succeeded", A, 2000)


def test_two_owners_in_one_batch_still_apply_exactly_one(dbs):
    # Given one recorder batch holding two outcomes of the same attempt
    (jid,) = _queued(dbs)
    # When written together / Then one applies
    applied = dbs.jobs.record_outcomes([_outcome(jid, A), _outcome(jid, B)])
    assert [o.owner for o in applied] == [A]


def test_a_running_attempt_takes_only_its_owners_outcome(dbs):
    # Given attempt 1 marked running by A
    (jid,) = _queued(dbs)
    dbs.jobs.mark_started([Started(jid, 1, "w", 1000, A)])
    # When B (which got a duplicate) marks and records it
    dbs.jobs.mark_started([Started(jid, 1, "w", 1500, B)])
    assert dbs.jobs.record_outcomes([_outcome(jid, B)]) == []
    # Then the row is still A's, and A's outcome applies
    assert dbs.jobs.get(jid).owner == A and dbs.jobs.get(jid).status == "running"
    assert dbs.jobs.record_outcomes([_outcome(jid, A)]) == [_outcome(jid, A)]


def test_a_stale_owner_after_a_takeover_writes_nothing(dbs):
    # Given attempt 1 running under A, and B taking it over (A's heartbeat expired)
    (jid,) = _queued(dbs)
    dbs.jobs.mark_started([Started(jid, 1, "w", 1000, A)])
    assert dbs.jobs.take_over(jid, 1, A, Started(jid, 1, "w2", 5000, B))
    # When A wakes up and writes its mark and its outcome
    dbs.jobs.mark_started([Started(jid, 1, "w", 1000, A)])
    stale = dbs.jobs.record_outcomes([_outcome(jid, A)])
    # Then neither took effect: the attempt is B's, and B's outcome is the one recorded
    assert stale == [] and dbs.jobs.get(jid).owner == B
    assert dbs.jobs.record_outcomes([_outcome(jid, B, end_ms=6000)]) == [_outcome(jid, B, end_ms=6000)]
    # and a second takeover from the old owner finds the row changed
    assert not dbs.jobs.take_over(jid, 1, A, Started(jid, 1, "w3", 7000, "c"))


def test_a_retry_outcome_then_a_duplicate_of_the_same_attempt_is_refused(dbs):
    # Given attempt 1 recorded as a retry (the job is pending again, at attempts 1)
    (jid,) = _queued(dbs)
    assert dbs.jobs.record_outcomes([_outcome(jid, A, status="pending")])
    assert (dbs.jobs.get(jid).status, dbs.jobs.get(jid).attempts) == ("pending", 1)
    # When a duplicate of attempt 1 records (and marks) too
    dbs.jobs.mark_started([Started(jid, 1, "w", 1000, B)])
    dup = dbs.jobs.record_outcomes([_outcome(jid, B)])
    # Then it is refused, while attempt 2 is open
    assert dup == [] and dbs.jobs.get(jid).status == "pending"
    assert dbs.jobs.record_outcomes([_outcome(jid, B, attempt=2)]) == [_outcome(jid, B, attempt=2)]


def test_a_retried_write_of_an_outcome_that_committed_counts_once(dbs):
    # Given an outcome that committed, though its writer saw an error and writes it again
    (jid,) = _queued(dbs)
    dbs.jobs.record_outcomes([_outcome(jid, A)])
    # When written again / Then it is reported applied (its event is still to be written)
    assert dbs.jobs.record_outcomes([_outcome(jid, A)]) == [_outcome(jid, A)]


def test_delivery_rows_are_read_in_one_call_and_judged_by_attempt_and_owner(dbs):
    # Given a queued job, a running one (A's), a finished one and a pending retry
    queued, running, done, retry = _queued(dbs, 4)
    dbs.jobs.mark_started([Started(running, 1, "w", 1000, A)])
    dbs.jobs.record_outcomes([_outcome(done, A), _outcome(retry, A, status="pending")])
    # When the subscriber reads their rows (and one id without a row)
    rows = dbs.jobs.delivery_rows([queued, running, done, retry, 10**12])
    # Then the stranger is absent and each verdict follows the row
    assert 10**12 not in rows and rows[queued].action == "noop" and rows[queued].arguments == "{}"
    assert rows[queued].verdict(1, B) == "run" and rows[queued].verdict(2, B) == "stale"
    assert rows[running].verdict(1, A) == "run" and rows[running].verdict(1, B) == "foreign"
    assert rows[done].verdict(1, B) == "stale"
    assert rows[retry].verdict(1, B) == "stale" and rows[retry].verdict(2, B) == "run"


#: text a packed read (``db/packed.py``: one JSON array per row on MariaDB) must give back as stored
AWKWARD_ARGUMENTS = '{"s": "quote \\" backslash \\\\ tab \\t é ☃ 𝄞 \\u0000 end", "n": 12345678901234567890,\n "f": 0.1}'


def test_delivery_rows_give_back_each_column_as_stored_whatever_it_holds(dbs):
    # Given a job whose arguments hold quotes, backslashes, escapes, non-ASCII and a 20-digit
    # number, and a job of an account named with a quote, running under an owner
    plain, odd = [dbs.jobs.submit(job(args=a))[0].job_id for a in ("{}", AWKWARD_ARGUMENTS)]
    dbs.jobs.relay_pending(100, lambda batch: None)
    dbs.jobs.mark_started([Started(odd, 1, "w", 1000, "owner 'é' \\ x")])
    # When the subscriber reads their rows
    rows = dbs.jobs.delivery_rows([plain, odd])
    # Then every value is the stored one, with its type: text as text, numbers as ints, NULL as None
    assert rows[odd].arguments == AWKWARD_ARGUMENTS and rows[odd].owner == "owner 'é' \\ x"
    assert rows[odd][:2] == (odd, "noop") and rows[odd][3:6] == ("running", 1, 3)
    assert rows[plain] == (plain, "noop", "{}", "queued", 0, 3, None, None, None)
    assert all(type(v) is int for r in rows.values() for v in (r.job_id, r.attempts, r.max_attempts))
    # And a whole row read back (``get``, packed too) is the same, its times included
    got = dbs.jobs.get(odd)
    assert (got.arguments, got.owner, got.status, got.start_timestamp, got.end_timestamp) == (
        AWKWARD_ARGUMENTS, "owner 'é' \\ x", "running", 1000, None)
    assert type(got.created_timestamp) is int and dbs.jobs.get(10**12) is None


@pytest.mark.parametrize("keys", [["key", "KEY", "key ", "kéy", "keý"]])
def test_idempotency_keys_compare_byte_for_byte(dbs, keys):
    # Given keys differing only in case, a trailing space or an accent
    # When each is submitted
    got = [dbs.jobs.submit(job(key=k)) for k in keys]
    # Then each is its own new job, found again by its exact key only
    assert all(created for _, created in got) and len({j.job_id for j, _ in got}) == len(keys)
    for k, (j, _) in zip(keys, got):
        assert dbs.jobs.by_idempotency_key(k).job_id == j.job_id
    assert dbs.jobs.submit(job(key="key"))[0].job_id == got[0][0].job_id


def test_heartbeats_of_names_differing_in_case_are_separate(dbs):
    # Given two subscribers named "Sub" and "sub" on one host
    dbs.heartbeats.beat("subscriber", "Sub", ttl_s=30)
    dbs.heartbeats.beat("subscriber", "sub", ttl_s=30)
    # Then both rows exist
    assert sorted(hb.name for hb in dbs.heartbeats.all()) == ["Sub", "sub"]


V1_JOB = """CREATE TABLE enstratus_job (
  job_id BIGINT NOT NULL AUTO_INCREMENT, action VARCHAR(200) NOT NULL, arguments MEDIUMTEXT NOT NULL,
  queue VARCHAR(100) NOT NULL, status VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL, idempotency_key VARCHAR(200), created_timestamp BIGINT NOT NULL,
  queued_timestamp BIGINT, start_timestamp BIGINT, end_timestamp BIGINT, worker VARCHAR(200),
  result MEDIUMTEXT, error TEXT, PRIMARY KEY (job_id), UNIQUE (idempotency_key),
  INDEX ix_enstratus_job_status (status, job_id)) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"""
V1_HEARTBEAT = """CREATE TABLE enstratus_heartbeat (
  daemon VARCHAR(32) NOT NULL, name VARCHAR(200) NOT NULL, host VARCHAR(200) NOT NULL,
  pid INTEGER NOT NULL, started_ms BIGINT NOT NULL, beat_ms BIGINT NOT NULL,
  expires_ms BIGINT NOT NULL, status VARCHAR(16) NOT NULL, details TEXT,
  PRIMARY KEY (daemon, name, host)) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"""


def test_a_version_1_mariadb_database_is_migrated(mysql_url, tmp_path):
    # Given a provisioning database as release 1 made it (case-insensitive keys, no owner column)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(V1_JOB)
        conn.exec_driver_sql(V1_HEARTBEAT)
        conn.exec_driver_sql("CREATE TABLE enstratus_schema_version (component VARCHAR(50) "
                             "PRIMARY KEY, version INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO enstratus_schema_version VALUES ('provisioning', 1)")
        conn.exec_driver_sql("INSERT INTO enstratus_job (action, arguments, queue, status, attempts, "
                             "max_attempts, idempotency_key, created_timestamp) "
                             "VALUES ('noop', '{}', 'default', 'pending', 0, 3, 'key', 1)")
    engine.dispose()
    # When this release opens it
    settings = WorkerSettings(provisioning_url=Secret(mysql_url), analytics_url=Secret(mysql_url))
    dbs = open_databases(settings, Layout(tmp_path))
    try:
        # Then it is at the chain's head (the hand version row gone), the old job is kept, and
        # keys and names are exact
        assert migrate.current(dbs.provisioning, "provisioning").at_head
        assert "enstratus_schema_version" not in sa.inspect(dbs.provisioning).get_table_names()
        old = dbs.jobs.by_idempotency_key("key")
        assert old is not None and old.owner is None
        assert dbs.jobs.by_idempotency_key("KEY") is None
        assert dbs.jobs.submit(job(key="KEY"))[1] and dbs.jobs.submit(job(key="key "))[1]
        dbs.heartbeats.beat("subscriber", "Sub", ttl_s=30)
        dbs.heartbeats.beat("subscriber", "sub", ttl_s=30)
        assert len(dbs.heartbeats.all()) == 2
        # and the owner column works on the migrated table
        assert dbs.jobs.record_outcomes([_outcome(old.job_id, A)]) == [_outcome(old.job_id, A)]
    finally:
        dbs.close()


def test_a_version_1_sqlite_database_gains_the_owner_column(tmp_path):
    # Given a SQLite provisioning database at version 1: no owner column
    url = "sqlite:///data/prov.db"
    settings = WorkerSettings(provisioning_url=Secret(url), analytics_url=Secret(url))
    (tmp_path / "data").mkdir()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'prov.db'}")
    legacy_schema.make(engine, "provisioning", 1)
    engine.dispose()
    # When this release opens it again / Then it can record outcomes with owners
    dbs = open_databases(settings, Layout(tmp_path))
    try:
        (jid,) = _queued(dbs)
        assert dbs.jobs.record_outcomes([_outcome(jid, A)]) == [_outcome(jid, A)]
    finally:
        dbs.close()


def test_a_batch_that_all_applies_is_not_read_back(dbs, monkeypatch):
    # Given 50 queued jobs and their outcomes, none contested
    ids = _queued(dbs, 50)
    statements = statements_of(dbs.provisioning, monkeypatch)
    # When they are recorded
    applied = dbs.jobs.record_outcomes([_outcome(i, A) for i in ids])
    monkeypatch.undo()
    # Then all took effect, from the UPDATE's count of matched rows alone: no SELECT read-back,
    # one UPDATE of the jobs and one of the job totals (db/jobs.py: totals that survive pruning)
    verbs = [(sql.split()[0].upper(), sql.split()[1]) for sql in statements]
    assert len(applied) == 50 and "SELECT" not in [v for v, _ in verbs]
    assert [t for v, t in verbs if v == "UPDATE"] == ["enstratus_job", "enstratus_job_total"]
    # And a batch where one is contested is read back, and only the other applies
    (contested, free) = _queued(dbs, 2)
    dbs.jobs.record_outcomes([_outcome(contested, B)])
    again = dbs.jobs.record_outcomes([_outcome(contested, A), _outcome(free, A)])
    assert [o.job_id for o in again] == [free]
