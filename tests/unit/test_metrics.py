"""Prometheus metrics scraped from a registry over temp SQLite databases filled by the real stores."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from enstratus_workers.config.settings import (KMClientSettings, MQSettings, PersistenceSettings,
                                               ProvisioningSettings, Settings, WorkerSettings, WorkerType)
from enstratus_workers.db import Event, NewJob, Outcome, Started, now_ms, open_databases
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.metrics import ServiceCollector, make_registry, serve_metrics
from enstratus_workers.mq import QueueDepth

HOST = short_hostname()


class FakeDepths:
    def __init__(self, depths: dict[str, tuple[int, int]], fail: bool = False):
        self.depths, self.fail = depths, fail

    def __call__(self, queues):
        if self.fail:
            raise ConnectionClosed("broker down")
        return [QueueDepth(q, *self.depths.get(q, (0, 0))[:1], 2, 1, self.depths.get(q, (0, 0))[1])
                for q in queues]


def scrape(registry) -> dict:
    """``{(sample name, sorted label items): value}`` from the exposition text."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def env(tmp_path):
    layout = Layout(tmp_path)
    settings = Settings(home=tmp_path, mq=MQSettings(),
                        worker=WorkerSettings(types=(WorkerType("default", ("default",), 2, 2),
                                                     WorkerType("launcher", ("launch",), 1, 1))),
                        persistence=PersistenceSettings(), km_client=KMClientSettings(),
                        provisioning=ProvisioningSettings())
    dbs = open_databases(settings.worker, layout)
    yield settings, layout, dbs
    dbs.close()


def event(job_id, action, outcome, duration_ms, attempt=1):
    return Event(job_id, action, "default", attempt, outcome, duration_ms, "w", now_ms())


def worker(name, state, wtype="default", rc=0):
    return {"name": name, "display": name, "type": wtype, "pid": 1000 + int(name[-1]), "state": state,
            "inflight": 0, "tasks_done": 0, "reincarnations": rc, "uptime_s": 1.0}


def subscriber_details(workers, *, received=0, pending=0, inflight=0, recording=0):
    return {"workers": workers, "stats": {"received": received, "succeeded": 0, "failed": 0,
                                          "dead_lettered": 0, "duplicates": 0},
            "pending": {"default": pending}, "inflight": inflight, "recording": recording,
            "connected": True, "reconnects": 0}


def test_attempts_are_counted_by_action_and_outcome_at_scrape_time(env):
    settings, layout, dbs = env
    # Given three attempts recorded in the analytics DB
    dbs.events.record([event(1, "launch", "failed", 10), event(1, "launch", "succeeded", 20, attempt=2),
                       event(2, "sync", "succeeded", 5)])
    registry = make_registry(settings, layout, dbs=dbs, depths=FakeDepths({}))
    samples = scrape(registry)
    assert sample(samples, "enstratus_workers_action_attempts_total", action="launch", outcome="failed") == 1
    assert sample(samples, "enstratus_workers_action_attempts_total", action="launch", outcome="succeeded") == 1
    assert sample(samples, "enstratus_workers_action_attempts_total", action="sync", outcome="succeeded") == 1
    # When more attempts are recorded, the next scrape counts them: nothing is cached in the collector
    dbs.events.record([event(3, "sync", "succeeded", 5), event(4, "sync", "dead", 5)])
    samples = scrape(registry)
    assert sample(samples, "enstratus_workers_action_attempts_total", action="sync", outcome="succeeded") == 2
    assert sample(samples, "enstratus_workers_action_attempts_total", action="sync", outcome="dead") == 1
    assert sample(samples, "enstratus_workers_up", source="analytics") == 1


def test_the_duration_histogram_buckets_the_recorded_durations(env):
    settings, layout, dbs = env
    # Given attempts of 3 ms, 40 ms, 0.7 s twice and 20 s
    dbs.events.record([event(i, "launch", "succeeded", ms) for i, ms in enumerate((3, 40, 700, 700, 20_000))])
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    bucket = lambda le: sample(samples, "enstratus_workers_action_duration_seconds_bucket",  # noqa: E731
                               action="launch", le=le)
    # Then the cumulative buckets, the count and the sum are those of these durations
    assert bucket("0.005") == 1
    assert bucket("0.01") == 1
    assert bucket("0.05") == 2
    assert bucket("0.5") == 2
    assert bucket("1.0") == 4
    assert bucket("10.0") == 4
    assert bucket("30.0") == 5
    assert bucket("+Inf") == 5
    assert sample(samples, "enstratus_workers_action_duration_seconds_count", action="launch") == 5
    total = sample(samples, "enstratus_workers_action_duration_seconds_sum", action="launch")
    assert total == pytest.approx(21.443)


def test_actions_past_the_cap_are_summed_under_one_label(env, monkeypatch):
    from enstratus_workers import metrics

    settings, layout, dbs = env
    monkeypatch.setattr(metrics, "METRIC_ACTIONS_MAX", 2)
    # Given the attempts of four actions: two busy ones, and two names invented by a client
    dbs.events.record([event(1, "launch", "succeeded", 10), event(2, "launch", "failed", 10),
                       event(3, "sync", "succeeded", 5), event(4, "sync", "succeeded", 5),
                       event(5, "made.up.1", "failed", 1), event(6, "made.up.2", "failed", 3)])
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    attempts = {dict(labels)["action"] for (name, labels) in samples
                if name == "enstratus_workers_action_attempts_total"}
    # Then the two with the most attempts keep their names, the others are summed as "(other)"
    assert attempts == {"launch", "sync", "(other)"}
    assert sample(samples, "enstratus_workers_action_attempts_total", action="(other)", outcome="failed") == 2
    assert sample(samples, "enstratus_workers_action_duration_seconds_count", action="(other)") == 2
    assert sample(samples, "enstratus_workers_action_duration_seconds_sum", action="(other)") == pytest.approx(0.004)
    assert sample(samples, "enstratus_workers_action_attempts_total", action="launch", outcome="failed") == 1


def test_jobs_by_status_come_from_the_job_table(env):
    settings, layout, dbs = env
    # Given three jobs: one pending, one relayed (queued), one run to success
    for action in ("a", "b", "c"):
        dbs.jobs.submit(NewJob(action, "{}", "default", 3))
    dbs.jobs.relay_pending(2, lambda batch: None)
    dbs.jobs.mark_started([Started(1, 1, "w", now_ms())])
    dbs.jobs.record_outcomes([Outcome(1, 1, "succeeded", "w", now_ms(), now_ms(), json.dumps({}), None)])
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    assert sample(samples, "enstratus_workers_jobs", status="pending") == 1
    assert sample(samples, "enstratus_workers_jobs", status="queued") == 1
    assert sample(samples, "enstratus_workers_jobs", status="succeeded") == 1
    assert sample(samples, "enstratus_workers_jobs", status="dead") == 0


def test_queue_depths_per_queue_come_from_the_transport(env):
    settings, layout, dbs = env
    samples = scrape(make_registry(settings, layout, dbs=dbs,
                                   depths=FakeDepths({"default": (7, 1), "launch": (0, 3)})))
    assert sample(samples, "enstratus_workers_queue_messages", queue="default", state="ready") == 7
    assert sample(samples, "enstratus_workers_queue_messages", queue="default", state="dead") == 1
    assert sample(samples, "enstratus_workers_queue_messages", queue="launch", state="ready") == 0
    assert sample(samples, "enstratus_workers_queue_messages", queue="launch", state="dead") == 3
    assert sample(samples, "enstratus_workers_queue_messages", queue="launch", state="unacked") == 2
    assert sample(samples, "enstratus_workers_queue_consumers", queue="default") == 1
    assert sample(samples, "enstratus_workers_up", source="queue") == 1


def test_workers_reincarnations_and_queues_come_from_live_clusters_only(env):
    settings, layout, dbs = env
    # Given a live subscriber with three workers, and a dead one whose figures are stale
    dbs.heartbeats.beat("subscriber", "live", ttl_s=10, details=subscriber_details(
        [worker("default.1", "working", rc=2), worker("default.2", "idle", rc=1),
         worker("launcher.1", "working", "launcher")], received=40, pending=3, inflight=2, recording=1))
    dbs.heartbeats.beat("subscriber", "gone", ttl_s=-1, details=subscriber_details(
        [worker("default.1", "working", rc=5)], received=9))
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    live, gone = f"subscriber@live@{HOST}", f"subscriber@gone@{HOST}"
    workers = lambda c, pool, state: sample(samples, "enstratus_workers_workers",  # noqa: E731
                                            cluster=c, pool=pool, state=state)
    # Then busy and idle workers are counted per pool of the live cluster
    assert workers(live, "default", "working") == 1
    assert workers(live, "default", "idle") == 1
    assert workers(live, "default", "stopped") == 0
    assert workers(live, "launcher", "working") == 1
    assert sample(samples, "enstratus_workers_worker_reincarnations_total", cluster=live, pool="default") == 3
    assert sample(samples, "enstratus_workers_cluster_task_queue", cluster=live) == 5
    assert sample(samples, "enstratus_workers_cluster_result_queue", cluster=live) == 1
    # And the dead cluster shows only as dead, with its consumed count kept
    assert workers(gone, "default", "working") is None
    assert sample(samples, "enstratus_workers_cluster_status", cluster=gone, status="dead") == 1
    assert sample(samples, "enstratus_workers_cluster_status", cluster=gone, status="running") == 0
    assert sample(samples, "enstratus_workers_cluster_status", cluster=live, status="running") == 1
    assert sample(samples, "enstratus_workers_consumed_total", cluster=live) == 40
    assert sample(samples, "enstratus_workers_consumed_total", cluster=gone) == 9


def test_published_is_read_from_each_publishers_heartbeat(env):
    settings, layout, dbs = env
    dbs.heartbeats.beat("publisher", "main", ttl_s=10, details={"published": 123, "connected": True})
    registry = make_registry(settings, layout, dbs=dbs, depths=FakeDepths({}))
    assert sample(scrape(registry), "enstratus_workers_published_total", publisher=f"publisher@main@{HOST}") == 123
    dbs.heartbeats.beat("publisher", "main", ttl_s=10, details={"published": 130, "connected": True})
    assert sample(scrape(registry), "enstratus_workers_published_total", publisher=f"publisher@main@{HOST}") == 130


def test_a_source_that_cannot_be_read_is_reported_down_and_the_rest_still_scraped(env):
    settings, layout, dbs = env
    dbs.events.record([event(1, "sync", "succeeded", 5)])
    # Given a broker that is down
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({}, fail=True)))
    # Then the scrape succeeds, says the queue is down, and still has the databases' metrics
    assert sample(samples, "enstratus_workers_up", source="queue") == 0
    assert sample(samples, "enstratus_workers_up", source="provisioning") == 1
    assert not [k for k in samples if k[0] == "enstratus_workers_queue_messages"]
    assert sample(samples, "enstratus_workers_action_attempts_total", action="sync", outcome="succeeded") == 1


def test_an_unreadable_database_is_reported_down(tmp_path, env):
    settings, layout, _dbs = env
    from dataclasses import replace

    from enstratus_workers.config.settings import Secret

    (tmp_path / "dir.db").mkdir()
    unopenable = Secret(f"sqlite:///{tmp_path}/dir.db")
    broken = replace(settings, worker=replace(settings.worker, analytics_url=unopenable))
    collector = ServiceCollector(broken, layout, depths=FakeDepths({}))  # opens its own databases
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        samples = scrape(registry)
    finally:
        collector.close()
    assert sample(samples, "enstratus_workers_up", source="analytics") == 0
    assert sample(samples, "enstratus_workers_up", source="provisioning") == 1
    assert sample(samples, "enstratus_workers_jobs", status="pending") == 0


def test_serve_metrics_answers_over_http(env):
    settings, layout, dbs = env
    dbs.events.record([event(1, "sync", "succeeded", 5)])
    server, thread = serve_metrics(0, registry=make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert resp.status == 200
        assert 'enstratus_workers_action_attempts_total{action="sync",outcome="succeeded"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_serve_metrics_needs_a_registry_or_settings():
    with pytest.raises(ValueError):
        serve_metrics(0)


def test_each_cloud_key_shows_its_current_rate_beside_the_configured_one_and_its_counts(env):
    import dataclasses

    from enstratus_workers.cloud.rate_policy import Policy
    from enstratus_workers.config.settings import CloudRate
    from enstratus_workers.db.cloud_rates import CloudRateStore

    settings, layout, dbs = env
    settings = dataclasses.replace(settings, worker=WorkerSettings(
        cloud_rate=10.0, cloud_rates=(CloudRate("ec2", "42", 4.0),)))
    store = CloudRateStore(dbs.provisioning)
    # Given a key throttled once after three calls, and another key called twice
    policy = Policy(4.0, max_wait_s=5.0, recover_after_s=600.0)
    turns = [store.take_turn("ec2", "42", policy) for _ in range(3)]
    store.throttled("ec2", "42", policy, turns[-1].asked_us, retry_after_s=1)
    for _ in range(2):
        store.take_turn("local", "7", Policy(10.0, 5.0, 10.0))
    # When the metrics are scraped
    samples = scrape(make_registry(settings, layout, dbs=dbs, depths=FakeDepths({})))
    # Then the throttled key reads at half its configured rate, the other at its own
    p = "enstratus_workers_cloud_"
    assert (sample(samples, p + "rate", provider="ec2", account="42"),
            sample(samples, p + "rate_configured", provider="ec2", account="42")) == (2.0, 4.0)
    assert sample(samples, p + "rate", provider="local", account="7") == 10.0
    # and the calls, throttles and deferrals of each are counted
    assert [sample(samples, p + name + "_total", provider="ec2", account="42")
            for name in ("requests", "throttles", "deferrals")] == [3, 1, 0]
    assert sample(samples, p + "requests_total", provider="local", account="7") == 2


def test_stored_other_rows_are_summed_with_the_actions_past_the_cap_never_named_twice():
    from enstratus_workers.db.analytics import ActionTotal
    from enstratus_workers.metrics import capped_actions

    def total(action, outcome, n):
        return ActionTotal(action, outcome, n, 10 * n, (n, 0))
    # Given totals retention already folded into "(other)" (busier than any action), and more
    # actions by name than the cap
    stored = [total("(other)", "failed", 50), total("launch", "succeeded", 9), total("sync", "succeeded", 7),
              total("made.up", "failed", 1), total("made.up", "succeeded", 2)]
    # Then "(other)" is never ranked as an action: one row per outcome, the stored rows and the
    # actions past the cap together
    assert capped_actions(stored, 2) == [total("launch", "succeeded", 9), total("sync", "succeeded", 7),
                                         total("(other)", "failed", 51), total("(other)", "succeeded", 2)]
    # and under the cap the stored rows are shown as they are
    assert capped_actions(stored, 3) == stored
