"""Guest heartbeats: real guest agents on loopback, real server objects in a SQLite persistence
store, real heartbeat rows and jobs in a SQLite provisioning DB. A guest that stops answering is
marked unreachable after N rounds with exactly one server.sync of its account; one that answers
again is running again; two pingers split the servers and a survivor takes a dead one's share."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from enstratus_workers.cloud.servers import SERVER_BUCKET, indexes
from enstratus_workers.config.settings import (
    KMClientSettings,
    MQSettings,
    PersistenceSettings,
    ProvisioningSettings,
    Secret,
    Settings,
    WorkerSettings,
)
from enstratus_workers.daemons.pinger import guest_health as gh
from enstratus_workers.daemons.pinger.guest_beats.tracker import GuestHealth
from enstratus_workers.daemons.pinger.guest_watch import (
    SUMMARY_KEY,
    GuestWatch,
    check,
    pinger_identity,
)
from enstratus_workers.db import open_databases
from enstratus_workers.errors import CHECK_CRITICAL, CHECK_WARNING, DatabaseError
from enstratus_workers.guest.agent import GuestAgent
from enstratus_workers.jobs.submit import submit as real_submit
from enstratus_workers.layout import Layout
from enstratus_workers.persist import open_store

MISSES = 3


@pytest.fixture
def settings(tmp_path) -> Settings:
    worker = WorkerSettings(provisioning_url=Secret("sqlite:///data/prov.db"),
                            analytics_url=Secret("sqlite:///data/anal.db"), guest_interval=1.0,
                            guest_misses=MISSES, guest_timeout=0.5, guest_concurrency=8)
    return Settings(home=tmp_path, mq=MQSettings(), worker=worker,
                    persistence=PersistenceSettings(sqlite_path=tmp_path / "persist.db"),
                    km_client=KMClientSettings(), provisioning=ProvisioningSettings())


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path)


@pytest.fixture
def dbs(settings, layout):
    d = open_databases(settings.worker, layout)
    yield d
    d.close()


@pytest.fixture
def store(settings, layout):
    s = open_store(settings.persistence, layout)
    yield s
    s.close()


@pytest.fixture
def agents():
    """Start guest agents on loopback; every one still running is stopped after the test."""
    started = []

    def start(node_id: str, port: int = 0) -> GuestAgent:
        agent = GuestAgent(node_id, port=port).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def put_server(store, server_id, agent, account="acct-1", state="running"):
    data = {"server_id": server_id, "account": account, "provider": "local",
            "provider_node_id": agent.identity.server_id, "state": state,
            "public_ip": "127.0.0.1", "agent_port": agent.port}
    store.put(SERVER_BUCKET, server_id, data, indexes(data))


def server(store, server_id) -> dict:
    return dict(store.get(SERVER_BUCKET, server_id).data)


def sync_jobs(dbs) -> list[dict]:
    with dbs.provisioning.connect() as conn:
        rows = conn.execute(sa.text("SELECT arguments, idempotency_key FROM enstratus_job "
                                    "WHERE action = 'server.sync' ORDER BY job_id")).mappings().all()
    return [{"arguments": json.loads(r["arguments"]), "key": r["idempotency_key"]} for r in rows]


def test_a_silent_guest_goes_unreachable_after_n_rounds_with_one_sync_and_comes_back(
        settings, layout, dbs, store, agents):
    # Given two running servers whose agents answer
    a, b = agents("ln-a"), agents("ln-b")
    put_server(store, "srv-a", a)
    put_server(store, "srv-b", b)
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)

    # When a round runs, both are up and their objects say so
    before = int(time.time() * 1000)
    summary = watch.beat_round()
    assert (summary["guests"], summary["up"], summary["down"], summary["unreachable"]) == (2, 2, 0, 0)
    assert summary["pingers"] == 1 and summary["syncs"] == 0 and summary["round_ms"] >= 0
    first = server(store, "srv-a")
    assert first["guest_health"] == "up" and first["state"] == "running"
    assert first["last_seen_ms"] >= before and first["guest_error"] is None

    # When srv-a's agent dies, it is down (not yet unreachable) for N-1 rounds, with no job
    port = a.port
    a.stop()
    for _ in range(MISSES - 1):
        summary = watch.beat_round()
        assert (summary["up"], summary["down"], summary["unreachable"]) == (1, 1, 0)
        stored = server(store, "srv-a")
        assert (stored["state"], stored["guest_health"]) == ("running", "down")
        assert stored["last_seen_ms"] == first["last_seen_ms"]
    assert sync_jobs(dbs) == []

    # Then at the N-th missed beat it is unreachable and one server.sync of its account is submitted
    summary = watch.beat_round()
    assert (summary["up"], summary["down"], summary["unreachable"], summary["syncs"]) == (1, 0, 1, 1)
    stored = server(store, "srv-a")
    assert (stored["state"], stored["guest_health"]) == ("unreachable", "unreachable")
    assert stored["guest_error"] == "connection refused"
    jobs = sync_jobs(dbs)
    assert jobs == [{"arguments": {"account": "acct-1"},
                     "key": f"guest:srv-a:unreachable:{first['last_seen_ms']}"}]
    assert server(store, "srv-b")["state"] == "running"

    # And further rounds of the same outage submit nothing more
    for _ in range(2):
        assert watch.beat_round()["unreachable"] == 1
    assert len(sync_jobs(dbs)) == 1
    assert [code for code, _ in check(settings, layout, dbs, store)] == [CHECK_WARNING]

    # When the agent answers again on its port, one round marks the server up and running
    agents("ln-a", port=port)
    summary = watch.beat_round()
    assert (summary["up"], summary["down"], summary["unreachable"]) == (2, 0, 0)
    back = server(store, "srv-a")
    assert (back["state"], back["guest_health"], back["guest_error"]) == ("running", "up", None)
    assert back["last_seen_ms"] > first["last_seen_ms"]
    assert check(settings, layout, dbs, store) == []
    assert len(sync_jobs(dbs)) == 1


def test_a_new_outage_gets_a_new_sync_and_a_restarted_pinger_repeats_none(
        settings, layout, dbs, store, agents):
    a = agents("ln-a")
    put_server(store, "srv-a", a)
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    watch.beat_round()
    a.stop()
    for _ in range(MISSES):
        watch.beat_round()
    assert len(sync_jobs(dbs)) == 1

    # Given the pinger restarted during the outage (its miss counts start from zero)
    restarted = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    restarted.beat_round()
    # Then the server does not flap back to "down" while it keeps failing
    assert server(store, "srv-a")["guest_health"] == "unreachable"
    for _ in range(MISSES):
        restarted.beat_round()
    # And its own "unreachable" after N misses submits the same key: still one job
    assert len(sync_jobs(dbs)) == 1

    # When the guest comes back and goes away again, that second outage gets its own sync
    port = a.port
    again = agents("ln-a", port=port)
    restarted.beat_round()
    again.stop()
    for _ in range(MISSES):
        restarted.beat_round()
    jobs = sync_jobs(dbs)
    assert len(jobs) == 2 and jobs[0]["key"] != jobs[1]["key"]


def test_servers_of_one_account_going_unreachable_together_get_one_sync(
        settings, layout, dbs, store, agents):
    started = [agents(f"ln-{i}") for i in range(4)]
    for i, agent in enumerate(started):
        put_server(store, f"srv-{i}", agent, account="acct-9" if i < 3 else "acct-10")
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    watch.beat_round()
    for agent in started:
        agent.stop()
    for _ in range(MISSES):
        summary = watch.beat_round()
    assert summary["unreachable"] == 4 and summary["syncs"] == 2
    assert sorted(j["arguments"]["account"] for j in sync_jobs(dbs)) == ["acct-10", "acct-9"]


def test_two_pingers_split_the_servers_and_a_survivor_takes_a_dead_ones_share(
        settings, layout, dbs, store, agents):
    # Given 12 running servers and two pingers, each with a live heartbeat row
    ids = [f"srv-{i:02d}" for i in range(12)]
    for i, sid in enumerate(ids):
        put_server(store, sid, agents(f"ln-{i}"))
    dbs.heartbeats.beat("pinger", "a", ttl_s=60)
    dbs.heartbeats.beat("pinger", "b", ttl_s=60)
    pa = GuestWatch(settings, layout, dbs, "a", persistence=store)
    pb = GuestWatch(settings, layout, dbs, "b", persistence=store)

    # When each runs a round, they split the servers with no overlap and nothing left out
    sa_, sb_ = pa.beat_round(), pb.beat_round()
    assert sa_["pingers"] == sb_["pingers"] == 2
    assert pa.share and pb.share and not set(pa.share) & set(pb.share)
    assert sorted(pa.share + pb.share) == ids
    assert sa_["guests"] + sb_["guests"] == 12

    # When b's heartbeat row expires (b died without removing it)
    dbs.heartbeats.beat("pinger", "b", ttl_s=0.2)
    time.sleep(0.3)
    # Then a beats every server within two rounds
    rounds = 0
    while len(pa.share) < 12 and rounds < 2:
        pa.beat_round()
        rounds += 1
    assert sorted(pa.share) == ids

    # When b comes back (its row is renewed), a gives b's share back at its next round
    dbs.heartbeats.beat("pinger", "b", ttl_s=60)
    pa.beat_round()
    pb.beat_round()
    assert sorted(pa.share + pb.share) == ids and not set(pa.share) & set(pb.share)
    assert pinger_identity("b", settings.worker.host_name) in {pinger_identity(h.name, h.host) for h in dbs.heartbeats.all()}

    # And when b's row is removed (a clean stop), a takes all at once
    dbs.heartbeats.remove("pinger", "b")
    pa.beat_round()
    assert sorted(pa.share) == ids
    assert all(server(store, sid)["guest_health"] == "up" for sid in ids)


def test_a_server_whose_agent_moved_is_found_at_its_new_address(settings, layout, dbs, store, agents):
    # Given 13 servers: a round reads only a sixth of the healthy ones again (oldest first)
    for i in range(12):
        put_server(store, f"srv-{i:02d}", agents(f"ln-{i}"))
    old = agents("ln-moving")
    put_server(store, "srv-12", old)
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    assert watch.beat_round()["up"] == 13
    # When srv-12's guest reboots with its agent on another port, recorded by a sync
    old.stop()
    put_server(store, "srv-12", agents("ln-moving"))
    # Then the next round, which did not read srv-12 again, misses it once ...
    assert watch.beat_round()["down"] == 1
    # ... and that failure makes the pinger read the object again: the next round finds it
    summary = watch.beat_round()
    assert summary["up"] == 13 and server(store, "srv-12")["guest_health"] == "up"
    assert sync_jobs(dbs) == []


def test_a_sync_that_cannot_be_submitted_is_submitted_at_the_next_round(
        settings, layout, dbs, store, agents):
    calls = []

    def flaky_submit(*args, **kw):
        calls.append(kw["idempotency_key"])
        if len(calls) == 1:
            raise DatabaseError("provisioning database unavailable")
        return real_submit(*args, **kw)

    a = agents("ln-a")
    put_server(store, "srv-a", a)
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store, submit=flaky_submit)
    watch.beat_round()
    a.stop()
    for _ in range(MISSES):
        summary = watch.beat_round()
    assert summary["syncs"] == 0 and sync_jobs(dbs) == []
    assert watch.beat_round()["syncs"] == 1
    assert len(calls) == 2 and calls[0] == calls[1] and len(sync_jobs(dbs)) == 1


def test_servers_that_are_not_running_are_neither_beaten_nor_written(
        settings, layout, dbs, store, agents):
    a = agents("ln-a")
    put_server(store, "srv-stopped", a, state="stopped")
    put_server(store, "srv-gone", a, state="terminated")
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    assert watch.beat_round()["guests"] == 0
    assert "guest_health" not in server(store, "srv-stopped")
    # and a server terminated between the listing and the write is left alone
    assert gh.reconcile({"state": "terminated"}, gh.UNREACHABLE, 5, "refused", 1000) is None


def test_last_seen_is_refreshed_only_when_it_falls_behind_by_the_detection_window():
    stored = {"state": "running", "guest_health": "up", "last_seen_ms": 10_000}
    assert gh.reconcile(stored, gh.UP, 12_000, None, 3_000) is None
    assert gh.reconcile(stored, gh.UP, 13_000, None, 3_000)["last_seen_ms"] == 13_000
    # a change of health always carries the latest sighting, and never moves it back
    assert gh.reconcile(stored, gh.DOWN, 11_000, "timeout", 3_000)["last_seen_ms"] == 11_000
    assert "last_seen_ms" not in gh.reconcile({"state": "running"}, gh.DOWN, None, "x", 3_000)
    assert gh.reconcile(dict(stored, last_seen_ms=20_000), gh.DOWN, 11_000, "x", 3_000)["last_seen_ms"] == 20_000
    # health as recorded: a stored unreachable server stays so while it keeps failing
    assert gh.health_of(GuestHealth("unknown", 1, None), "unreachable") == gh.UNREACHABLE
    assert gh.health_of(GuestHealth("unknown", 1, None), "running") == gh.DOWN
    assert gh.health_of(GuestHealth("up", 0, 5), "unreachable") == gh.UP


def test_check_names_down_guests_and_ignores_what_is_fine(settings, layout, dbs, store, agents):
    a = agents("ln-a")
    now = int(time.time() * 1000)
    put_server(store, "srv-up", a)
    put_server(store, "srv-off", a, state="stopped")          # never seen to fail: not reported
    put_server(store, "srv-gone", a, state="terminated")
    data = dict(server(store, "srv-up"), server_id="srv-dead", state="stopped",
                guest_health="unreachable", last_seen_ms=now - 42_000)
    store.put(SERVER_BUCKET, "srv-dead", data, indexes(data))
    data = dict(data, server_id="srv-hung", state="unreachable")
    store.put(SERVER_BUCKET, "srv-hung", data, indexes(data))
    problems = check(settings, layout, dbs, store)
    assert len(problems) == 1 and problems[0][0] == CHECK_WARNING
    text = problems[0][1]
    assert text.startswith("2 guests down: srv-dead (stopped, last seen 4") and "srv-hung (unreachable" in text
    assert "srv-up" not in text and "srv-off" not in text and "srv-gone" not in text


def test_check_reports_guest_rounds_that_lag_or_stopped(settings, layout, dbs, store):
    now = int(time.time() * 1000)

    def pinger_reports(name, **summary):
        base = {"guests": 1, "up": 1, "down": 0, "unreachable": 0, "round_ms": 5, "lag_ms": 0,
                "at_ms": now, "interval_s": 1.0}
        dbs.heartbeats.beat("pinger", name, ttl_s=60, details={SUMMARY_KEY: {**base, **summary}})

    pinger_reports("fine")
    assert check(settings, layout, dbs, store) == []
    pinger_reports("late", lag_ms=1_500)
    pinger_reports("stuck", at_ms=now - 60_000)
    problems = dict((text.split(":")[0], code) for code, text in check(settings, layout, dbs, store))
    assert problems == {f"pinger late@{_host(dbs)}": CHECK_WARNING,
                        f"pinger stuck@{_host(dbs)}": CHECK_CRITICAL}


def test_check_reports_a_persistence_layer_it_cannot_read(settings, layout, dbs):
    closed = open_store(settings.persistence, layout)
    closed.close()
    [(code, text)] = check(settings, layout, dbs, closed)
    assert code == CHECK_CRITICAL and "cannot read server objects" in text


def _host(dbs) -> str:
    return dbs.heartbeats.all()[0].host


def test_a_server_object_with_a_field_of_the_wrong_kind_does_not_stop_the_round(
        settings, layout, dbs, store, agents, caplog):
    # Given two running servers, the first one's object edited by hand ("last_seen_ms" a word)
    a, b = agents("ln-a"), agents("ln-b")
    put_server(store, "srv-a", a, account="acct-1")
    put_server(store, "srv-b", b, account="acct-2")
    bad = server(store, "srv-a") | {"last_seen_ms": "yesterday"}
    store.put(SERVER_BUCKET, "srv-a", bad, indexes(bad))
    watch = GuestWatch(settings, layout, dbs, "p1", persistence=store)
    # When rounds run, the server after it still gets its health, and the bad one is named
    summary = watch.beat_round()
    assert summary["guests"] == 2 and summary["write_errors"] == 1
    assert server(store, "srv-b")["guest_health"] == "up"
    assert "cannot record the guest health of server srv-a" in caplog.text
    # And when both agents go silent, both accounts get their server.sync
    a.stop()
    b.stop()
    for _ in range(MISSES):
        summary = watch.beat_round()
    assert summary["unreachable"] == 2 and server(store, "srv-b")["state"] == "unreachable"
    assert sorted(j["arguments"]["account"] for j in sync_jobs(dbs)) == ["acct-1", "acct-2"]
