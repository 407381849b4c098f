"""Retention (db/retention.py) on the embedded SQLite and a real MariaDB: old finished jobs and
old events are deleted in batches under one lease, and every count survives it.

Periods are seconds; rows are made old by their recorded times (an outcome ending 20 s ago), so
no test sleeps out a period.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from enstratus_workers import cli
from enstratus_workers.clock import now_ms
from enstratus_workers.config import settings as cs
from enstratus_workers.config.settings import Secret, WorkerSettings
from enstratus_workers.db import Event, Outcome, Started, open_databases
from enstratus_workers.db import schema
from enstratus_workers.db.analytics import ServerEvent
from enstratus_workers.db.instances import SINCE_KEY, InstanceStore
from enstratus_workers.db.retention import Periods, Pruner
from enstratus_workers.layout import Layout
from enstratus_workers.metrics import make_registry
from tests import servicehome as sh
from tests.contract.test_jobs_db import dbs, job  # noqa: F401  (the fixture, on both databases)
from tests.unit.test_metrics import FakeDepths, scrape

OWNER = "subscriber@a:101:aaaa"
SHORT = Periods(succeeded=5, failed=10, dead=15, events=5)


def _finished(dbs, status, *, ended_s_ago, action="noop", created=None) -> int:
    """A job run once to ``status`` by its owner, ending ``ended_s_ago`` seconds ago, with its event."""
    (j, _) = dbs.jobs.submit(job(action=action))
    end = now_ms() - int(ended_s_ago * 1000)
    with dbs.provisioning.begin() as conn:   # created before it ended, as a real job is
        conn.exec_driver_sql(f"UPDATE enstratus_job SET created_timestamp = {int(created or end - 1000)} "
                             f"WHERE job_id = {j.job_id}")
    assert dbs.jobs.record_outcomes([Outcome(j.job_id, 1, status, "w@h.1", end - 40, end, None, None, OWNER)])
    dbs.events.record([Event(j.job_id, action, "default", 1, status, 40, "w@h.1", end)])
    return j.job_id


def _running(dbs, *, started_s_ago) -> int:
    (j, _) = dbs.jobs.submit(job())
    dbs.jobs.mark_started([Started(j.job_id, 1, "w@h.1", now_ms() - int(started_s_ago * 1000), OWNER)])
    return j.job_id


def _old_unfinished(dbs) -> list[int]:
    """A pending, a queued and a running job, all created long before any cutoff."""
    pending = dbs.jobs.submit(job())[0].job_id
    queued = dbs.jobs.submit(job())[0].job_id
    dbs.jobs.relay_pending(100, lambda batch: None)   # both queued; the pending one again below
    running = _running(dbs, started_s_ago=3600)
    with dbs.provisioning.begin() as conn:
        conn.exec_driver_sql(f"UPDATE enstratus_job SET status = 'pending' WHERE job_id = {pending}")
        conn.exec_driver_sql("UPDATE enstratus_job SET created_timestamp = 1000, queued_timestamp = 1000 "
                             f"WHERE job_id IN ({pending}, {queued}, {running})")
    return [pending, queued, running]


def _pruner(dbs, periods=SHORT, holder="pinger@test:1:aaaa", **kw) -> Pruner:
    return Pruner(dbs.provisioning, dbs.analytics, periods, holder, **kw)


def _ids(dbs) -> set[int]:
    with dbs.provisioning.connect() as conn:
        return set(conn.exec_driver_sql("SELECT job_id FROM enstratus_job").scalars())


def _event_jobs(dbs) -> set[int]:
    with dbs.analytics.connect() as conn:
        return set(conn.exec_driver_sql("SELECT job_id FROM enstratus_job_event").scalars())


def _settings(tmp_path):
    return cs.Settings(home=tmp_path, mq=cs.MQSettings(), worker=WorkerSettings(),
                       persistence=cs.PersistenceSettings(), km_client=cs.KMClientSettings(),
                       provisioning=cs.ProvisioningSettings())


def test_old_finished_jobs_and_events_go_recent_and_unfinished_ones_stay(dbs):
    # Given finished jobs on either side of their status's period, and old unfinished jobs
    [_finished(dbs, "succeeded", ended_s_ago=20), _finished(dbs, "failed", ended_s_ago=20),
           _finished(dbs, "dead", ended_s_ago=20)]
    recent = [_finished(dbs, "succeeded", ended_s_ago=1), _finished(dbs, "failed", ended_s_ago=8),
              _finished(dbs, "dead", ended_s_ago=12)]
    unfinished = _old_unfinished(dbs)
    for ago in (20, 1):
        dbs.events.record_server_event(ServerEvent("srv-1", "42", "running", "terminated", None, None,
                                                   now_ms() - ago * 1000))
    # When a pass runs
    deleted = _pruner(dbs).run_pass()
    # Then only the finished jobs older than their period are gone, and the events older than theirs
    assert _ids(dbs) == set(recent) | set(unfinished)
    assert deleted == {"succeeded": 1, "failed": 1, "dead": 1, "enstratus_job_event": 5,
                       "enstratus_server_event": 1}
    assert _event_jobs(dbs) == set(recent[:1])   # events keep 5 s: only the 1 s old one stays
    assert len(dbs.events.server_events("srv-1")) == 1
    # and the unfinished ones are as they were
    assert [dbs.jobs.get(i).status for i in unfinished] == ["pending", "queued", "running"]


def test_a_period_of_0_keeps_forever(dbs):
    _finished(dbs, "succeeded", ended_s_ago=10**6)
    assert _pruner(dbs, Periods(0, 0, 0, 0)).run_pass() == {}
    assert len(_ids(dbs)) == 1 and len(_event_jobs(dbs)) == 1


def test_counts_stats_and_metrics_are_the_same_after_pruning(dbs, tmp_path):
    # Given jobs finished long ago and lately, some created after a reset of the Jobs page's
    # counts, a redriven dead job, and unfinished ones
    for status in ("succeeded", "failed", "dead", "succeeded"):
        _finished(dbs, status, ended_s_ago=60, created=1000, action="old")
    store = InstanceStore(dbs.provisioning)
    since = now_ms() - 600_000   # reset ten minutes ago: the jobs below were created after it
    store.set_value(SINCE_KEY, str(since))
    for status in ("succeeded", "succeeded", "failed", "dead", "dead"):
        _finished(dbs, status, ended_s_ago=60, action="launch")
    _finished(dbs, "succeeded", ended_s_ago=0, action="launch")
    _old_unfinished(dbs)
    assert len(dbs.jobs.requeue_dead([_finished(dbs, "dead", ended_s_ago=60)], 1)) == 1   # pending now
    registry = make_registry(_settings(tmp_path), Layout(tmp_path), dbs=dbs, depths=FakeDepths({}))
    before = (dbs.jobs.counts(), dbs.jobs.counts(created_since_ms=since), scrape(registry))
    assert before[0] == {"pending": 2, "queued": 1, "running": 1, "succeeded": 5, "failed": 2, "dead": 3,
                         "cancelled": 0}
    # When a pass deletes all but the recent rows
    deleted = _pruner(dbs).run_pass()
    assert deleted["succeeded"] == 4 and deleted["dead"] == 3 and deleted["enstratus_job_event"] == 10
    # Then every count, since ever and since the reset, and every metric, is as it was
    after = (dbs.jobs.counts(), dbs.jobs.counts(created_since_ms=since), scrape(registry))
    assert after == before
    assert before[1] == {"pending": 1, "queued": 0, "running": 0, "succeeded": 3, "failed": 1, "dead": 2,
                         "cancelled": 0}
    # and a later reset counts from nothing, though the page's count of pruned jobs was kept
    later = store.reset_stats()
    assert dbs.jobs.counts(created_since_ms=later) == {**dict.fromkeys(before[0], 0), "succeeded": 0}


def test_two_pruners_at_once_do_not_both_run(dbs):
    # Given expired rows and two pruners (two pingers of one fleet)
    for _ in range(6):
        _finished(dbs, "succeeded", ended_s_ago=60)
    a, b = _pruner(dbs, holder="pinger@a:1:aaaa", batch=2), _pruner(dbs, holder="pinger@b:2:bbbb", batch=2)
    # When the first holds the lease mid-pass / Then the second does nothing
    assert a.step() is True
    assert b.step() is False and b.deleted == {}
    # and once the first is done, the second may take the next pass
    while a.step():
        pass
    assert a.deleted["succeeded"] == 6 and not _ids(dbs)
    assert b.acquire()


@pytest.mark.parametrize("off_s", [3600, -3600], ids=["an hour ahead", "an hour behind"])
def test_a_pruner_whose_hosts_clock_is_off_neither_takes_a_live_lease_nor_keeps_an_expired_one(
        mariadb_dbs, off_s):
    from tests.contract.test_dead_host_jobs import _clock_off_by

    dbs = mariadb_dbs
    for _ in range(4):
        _finished(dbs, "succeeded", ended_s_ago=60)
    a, b = _pruner(dbs, holder="pinger@a:1:aaaa", batch=1), _pruner(dbs, holder="pinger@b:2:bbbb", batch=1)
    # Given host A's pruner mid-pass, its lease live
    assert a.step() is True
    # When host B, its clock off by an hour, tries / Then it leaves the pass to A
    with _clock_off_by(off_s):
        assert b.step() is False and b.deleted == {}
    # and once A's lease expired (A stalled), B takes it, clock off or not (what a pass then
    # prunes is judged by the rows' end times, on B's clock: an hour late at worst)
    with dbs.provisioning.begin() as conn:
        conn.execute(schema.leases.update().values(expires_ms=0))
    with _clock_off_by(off_s):
        assert b.acquire() is True
    assert a.step() is False


def test_a_pruner_that_outlives_its_lease_stops_and_another_takes_over(dbs):
    # Given a pruner whose lease expired mid-pass (it stalled) and another that took it
    for _ in range(4):
        _finished(dbs, "failed", ended_s_ago=60)
    a = _pruner(dbs, holder="pinger@a:1:aaaa", batch=1)
    assert a.step() is True
    with dbs.provisioning.begin() as conn:   # a stalls past its lease (expired now, not in 1 ms:
        conn.execute(schema.leases.update().values(expires_ms=0))   # a loaded machine takes longer)
    b = _pruner(dbs, holder="pinger@b:2:bbbb", batch=1)
    assert b.step() is True
    # When the first wakes up / Then it stops, leaving the pass to the second
    assert a.step() is False and a.current is None and a.deleted == {"failed": 1}
    while b.step():
        pass
    assert b.deleted["failed"] == 3 and not _ids(dbs)


def test_each_delete_takes_at_most_a_batch(dbs):
    # Given 7 expired jobs and a pruner of batch 3
    for _ in range(7):
        _finished(dbs, "succeeded", ended_s_ago=60)
    deletes = []

    def seen(conn, cursor, sql, params, context, many):
        if sql.lstrip().upper().startswith("DELETE FROM ENSTRATUS_JOB "):
            deletes.append(len(re.search(r"IN \(([^)]*)\)", sql).group(1).split(",")))

    pruner = _pruner(dbs, Periods(5, 0, 0, 0), batch=3)
    sa.event.listen(dbs.provisioning, "before_cursor_execute", seen)
    try:
        # When a pass runs
        steps = 0
        while pruner.step():
            steps += 1
    finally:
        sa.event.remove(dbs.provisioning, "before_cursor_execute", seen)
    # Then the rows went 3, 3 and 1 at a time, one DELETE per step
    assert deletes == [3, 3, 1] and steps == 3 and not _ids(dbs)


def test_a_retried_outcome_write_is_not_counted_twice(dbs):
    # Given outcomes written once (their commit confirmed or not: the recorder writes them again)
    first = [dbs.jobs.submit(job())[0].job_id for _ in range(3)]
    outcomes = [Outcome(i, 1, "succeeded", "w", 1, 2, None, None, OWNER) for i in first]
    assert dbs.jobs.record_outcomes(outcomes) == outcomes
    # When they are written again with a new one (a contested chunk)
    (new, _) = dbs.jobs.submit(job())
    again = outcomes + [Outcome(new.job_id, 1, "failed", "w", 1, 2, None, None, OWNER)]
    assert dbs.jobs.record_outcomes(again) == again
    # Then each job is counted once
    counts = dbs.jobs.counts()
    assert (counts["succeeded"], counts["failed"]) == (3, 1)


def test_recovery_and_redrive_keep_the_dead_total(dbs):
    # Given a running last attempt whose subscriber is gone
    jid = _running(dbs, started_s_ago=3600)
    with dbs.provisioning.begin() as conn:
        conn.exec_driver_sql(f"UPDATE enstratus_job SET max_attempts = 1 WHERE job_id = {jid}")
    (stuck,) = dbs.jobs.stuck_running(now_ms())
    # When recovery ends it / Then it counts dead; and redriven, it no longer does
    assert dbs.jobs.recover(stuck, "stuck: test") == "dead" and dbs.jobs.counts()["dead"] == 1
    assert dbs.jobs.requeue_dead(None, 1) and dbs.jobs.counts()["dead"] == 0
    assert dbs.jobs.counts()["pending"] == 1


def test_a_version_2_database_gets_its_totals_from_its_rows(tmp_path):
    # Given databases as the release before the totals left them (revision 0001 of each chain):
    # finished jobs and events, no totals
    url_p, url_a = "sqlite:///data/prov.db", "sqlite:///data/anal.db"
    settings = WorkerSettings(provisioning_url=Secret(url_p), analytics_url=Secret(url_a))
    dbs = open_databases(settings, Layout(tmp_path))
    for status, ms in (("succeeded", 3), ("succeeded", 700), ("failed", 20_000)):
        jid = _finished(dbs, status, ended_s_ago=1)
        with dbs.analytics.begin() as conn:
            conn.exec_driver_sql(f"UPDATE enstratus_job_event SET duration_ms = {ms} WHERE job_id = {jid}")
    with dbs.provisioning.begin() as conn:
        for table in ("enstratus_job_total", "enstratus_job_pruned", "enstratus_lease",
                      "enstratus_cloud_rate"):   # provisioning_0005's
            conn.exec_driver_sql(f"DROP TABLE {table}")
        # and what provisioning_0004 added (the job's account, the relay's index, the pauses)
        conn.exec_driver_sql("DROP TABLE enstratus_pause")
        conn.exec_driver_sql("DROP INDEX ix_enstratus_job_relay")
        conn.exec_driver_sql("ALTER TABLE enstratus_job DROP COLUMN account")
        for column in ("cancel_requested_ms", "not_before_ms", "deferrals"):   # provisioning_0003's
            conn.exec_driver_sql(f"ALTER TABLE enstratus_job DROP COLUMN {column}")
        conn.exec_driver_sql("UPDATE enstratus_migration_provisioning SET version_num = 'provisioning_0001'")
    with dbs.analytics.begin() as conn:
        for ddl in ("DROP TABLE enstratus_action_total", "DROP TABLE enstratus_action_minute",
                    "DROP INDEX ix_enstratus_server_event_job", "ALTER TABLE enstratus_job_event DROP COLUMN error",
                    "ALTER TABLE enstratus_job_event DROP COLUMN host"):
            conn.exec_driver_sql(ddl)
        conn.exec_driver_sql("UPDATE enstratus_migration_analytics SET version_num = 'analytics_0001'")
    dbs.close()
    # When this release opens them
    dbs = open_databases(settings, Layout(tmp_path))
    try:
        # Then the totals are those of the rows, and the lease is there to take
        assert dbs.jobs.counts()["succeeded"] == 2 and dbs.jobs.counts()["failed"] == 1
        totals = {(t.action, t.outcome): (t.attempts, t.duration_ms, t.buckets[0], t.buckets[7])
                  for t in dbs.events.totals()}
        assert totals == {("noop", "succeeded"): (2, 703, 1, 1), ("noop", "failed"): (1, 20_000, 0, 0)}
        # and so are the per-minute figures of the charts
        with dbs.analytics.connect() as conn:
            minutes = conn.exec_driver_sql("SELECT outcome, SUM(attempts), SUM(duration_ms) "
                                           "FROM enstratus_action_minute GROUP BY outcome").all()
        assert sorted(minutes) == [("failed", 1, 20_000), ("succeeded", 2, 703)]
        assert _pruner(dbs).acquire()
    finally:
        dbs.close()


@pytest.mark.parametrize("key", ["retention.succeeded", "retention.failed", "retention.dead", "retention.cancelled",
                                 "retention.events", "retention.audit"])
@pytest.mark.parametrize("value, says", [("-1", "out of range"), ("a week", "is not a number")])
def test_a_bad_retention_value_fails_config_check_naming_the_key(tmp_path, capsys, key, value, says):
    # Given the shipped files but for one retention value
    home = sh.make_home(tmp_path)
    path = home / "services/worker/classes/worker.properties"
    sh.set_keys(path, {key: value})
    # When the operator runs config check / Then it exits 6, naming the key and why
    code = cli.main(["--home", str(home), "config", "check"])
    err = capsys.readouterr().err
    assert code == 6 and f"key '{key}'" in err and says in err, err


def test_the_shipped_file_states_the_defaults(tmp_path):
    from enstratus_workers.config import load_settings

    home = sh.make_home(tmp_path)
    s = load_settings(Layout(home)).pinger
    assert (s.retention_succeeded, s.retention_failed, s.retention_dead, s.retention_cancelled,
            s.retention_events, s.retention_audit) == (7 * 86400, 30 * 86400, 90 * 86400, 30 * 86400,
                                                       30 * 86400, 365 * 86400)
    assert (Periods.of(s).shortest(), Periods(0, 0, 0, 0).shortest()) == (7 * 86400, None)


def test_the_pingers_round_prunes_a_batch_a_turn_and_paces_itself(dbs, tmp_path):
    import dataclasses

    from enstratus_workers.daemons.pinger import retention_round as rr

    # Given expired jobs and a pinger whose retention keeps succeeded jobs 60 s
    for _ in range(3):
        _finished(dbs, "succeeded", ended_s_ago=600)
    settings = dataclasses.replace(_settings(tmp_path), worker=WorkerSettings(
        retention_succeeded=60, retention_failed=0, retention_dead=0, retention_events=0))
    r = rr.RetentionRound(settings, dbs, "test", Layout(tmp_path))
    r.pruner.batch = 2
    # When it takes turns / Then it deletes a batch a turn, pausing briefly while there is more,
    # then waits half the shortest period for the next pass
    assert (r.turn(), len(_ids(dbs))) == (rr.PAUSE_S, 1)
    assert r.turn() == rr.PAUSE_S and r.turn() == 30.0 and not _ids(dbs)
    # and a pinger whose retention keeps everything never prunes
    off = dataclasses.replace(settings, worker=WorkerSettings(
        retention_succeeded=0, retention_failed=0, retention_dead=0, retention_cancelled=0,
        retention_events=0, retention_audit=0))
    assert rr.RetentionRound(off, dbs, "test", Layout(tmp_path)).turn() is None


@pytest.mark.parametrize("held", [False, True], ids=["own-connection", "pingers-held-connection"])
def test_the_pass_holders_round_purges_the_dead_letters_that_died_before_retention_dead(dbs, tmp_path, monkeypatch,
                                                                                       held):
    import dataclasses
    import time

    from enstratus_workers.daemons.pinger import retention_round as rr
    from enstratus_workers.mq import open_transport
    from enstratus_workers.mq.base import OutgoingMessage
    from enstratus_workers.mq.shared import SharedTransport

    # Given two dead letters of the embedded queue, 0.2 s apart, and dead ones kept 60 s
    settings = dataclasses.replace(_settings(tmp_path), worker=WorkerSettings(
        retention_succeeded=0, retention_failed=0, retention_dead=60, retention_events=0))
    layout = Layout(tmp_path)
    deaths = []
    with open_transport(settings.mq, layout) as t:
        t.declare(["default"])
        for name in ("first", "second"):
            t.publish([OutgoingMessage("default", b"{}", message_id=name)])
            consumer = t.consumer(["default"], prefetch=1)
            (delivery,) = consumer.poll(5, 1)
            consumer.dead_letter(delivery, "gave up")
            consumer.close()
            deaths.append(now_ms())
            time.sleep(0.2)
    # When the pinger's round finishes a pass 60 s after the first death, not yet the second's
    monkeypatch.setattr(rr, "now_ms", lambda: deaths[0] + 100 + 60_000)
    broker = SharedTransport(settings, layout, client_name="retention") if held else None
    r = rr.RetentionRound(settings, dbs, "test", layout, broker=broker)
    if broker is not None:
        # the held connection is the only one it may use: it opens none of its own
        monkeypatch.setattr(rr, "open_transport", None)
    while r.turn() == rr.PAUSE_S:
        pass
    # Then the first is purged and the second is kept
    assert r.dead_letters_purged == 1
    with open_transport(settings.mq, layout) as t:
        assert [d.message_id for d in t.dead_letters("default")] == ["second"]
    # And a round without a finished pass of its own (another pinger holds the lease) purges nothing
    monkeypatch.setattr(rr, "now_ms", lambda: deaths[1] + 100 + 60_000)
    r.pruner.acquire = lambda now=None: False
    r.turn()
    assert r.dead_letters_purged == 1
    if broker is not None:
        broker.close()


def test_old_audit_rows_and_per_minute_figures_go_the_charts_hour_stays(dbs):
    from enstratus_workers.db.audit import AuditEntry, AuditStore, audit_log
    from enstratus_workers.db.schema import MINUTE_MS

    # Given audit rows written 20 s and 1 s ago, and attempts ended 3 hours and 30 min ago
    audit = AuditStore(dbs.provisioning)
    for ago in (20, 1):
        audit.record(AuditEntry(now_ms() - ago * 1000, "cli:op", "cli", "h", "job.retry", "jobs 1", 0))
    for ago_min in (180, 30):
        dbs.events.record([Event(1, "noop", "default", 1, "succeeded", 40, "w", now_ms() - ago_min * MINUTE_MS)])
    # When a pass runs that keeps events 5 s and audit rows 10 s
    deleted = _pruner(dbs, Periods(0, 0, 0, events=5, audit=10)).run_pass()
    # Then the audit row older than 10 s is gone, and the per-minute figures of 3 hours ago,
    # while those of the last hour stay for the charts (the events themselves are gone)
    assert deleted == {"enstratus_audit": 1, "enstratus_action_minute": 1, "enstratus_job_event": 2}
    with dbs.provisioning.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == 1
    assert [m.minute_ms for m in dbs.events.minutes(0)] == [
        (now_ms() - 30 * MINUTE_MS) // MINUTE_MS * MINUTE_MS]


def _totals(dbs) -> dict[tuple[str, str], int]:
    return {(t.action, t.outcome): t.attempts for t in dbs.events.totals()}


def test_action_totals_past_the_kept_names_are_folded_and_the_metrics_stay_the_same(dbs, tmp_path, monkeypatch):
    from enstratus_workers import metrics
    from enstratus_workers.db import analytics

    monkeypatch.setattr(analytics, "ACTIONS_KEPT", 3)
    monkeypatch.setattr(metrics, "METRIC_ACTIONS_MAX", 3)
    # Given the attempts of three busy actions and of six names a client made up, one of them
    # with two outcomes, all recent (retention deletes nothing)
    now = now_ms()
    events = []
    for action, outcome, n in (("launch", "succeeded", 9), ("sync", "succeeded", 7), ("sync", "failed", 1),
                               ("stop", "failed", 5), ("made.up.1", "failed", 2), ("made.up.1", "succeeded", 1),
                               *((f"made.up.{i}", "failed", 1) for i in range(2, 7))):
        events += [Event(len(events) + 1, action, "default", 1, outcome, 40 * n, "w@h.1", now)] * n
    dbs.events.record(events)
    registry = make_registry(_settings(tmp_path), Layout(tmp_path), dbs=dbs, depths=FakeDepths({}))
    before = scrape(registry)
    # When a pass runs, folding two actions a batch
    deleted = _pruner(dbs, batch=2).run_pass()
    # Then the three busiest keep their rows, the others are summed per outcome under "(other)"
    assert deleted == {"enstratus_action_total": 7}
    assert _totals(dbs) == {("launch", "succeeded"): 9, ("sync", "succeeded"): 7, ("sync", "failed"): 1,
                            ("stop", "failed"): 5, ("(other)", "failed"): 7, ("(other)", "succeeded"): 1}
    # and the metrics say what they said
    assert scrape(registry) == before
    # When a folded name comes back, and a new one comes busier than a kept one
    dbs.events.record([Event(100, "made.up.3", "default", 1, "failed", 10, "w@h.1", now)]
                      + [Event(101, "resize", "default", 1, "succeeded", 10, "w@h.1", now)] * 6)
    after = scrape(registry)
    _pruner(dbs, batch=2).run_pass()
    # Then the next pass folds what is past the kept names again, counting every attempt once
    assert _totals(dbs) == {("launch", "succeeded"): 9, ("sync", "succeeded"): 7, ("sync", "failed"): 1,
                            ("resize", "succeeded"): 6, ("(other)", "failed"): 13, ("(other)", "succeeded"): 1}
    assert scrape(registry) == after
    assert sum(_totals(dbs).values()) == len(events) + 7
