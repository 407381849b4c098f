"""The admin API through FastAPI's test client, against a temporary SQLite home: every resource,
every refusal, the token, the pages' login, and that the desired state survives a restart."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace

import pytest

from enstratus_workers.admin import load_admin_settings, load_token
from enstratus_workers.admin.auth import COOKIE
from enstratus_workers.mq.shared import SharedTransport
from enstratus_workers.config import load_settings
from enstratus_workers.db import open_databases
from enstratus_workers.db.desired import desired_types
from enstratus_workers.db.instances import InstanceStore
from enstratus_workers.errors import ConfigError, ConnectionClosed
from enstratus_workers.layout import Layout
from enstratus_workers.monitor.stat import Stat
from enstratus_workers.mq import OutgoingMessage, open_transport
from tests import servicehome as sh
from tests.unit.admin_helpers import TOKEN, Admin, api, home, serving, set_token, stored_job  # noqa: F401 (fixtures)


def default_instance(api) -> dict:
    return next(i for i in api.call("GET", "/instances").json() if i["type"] == "default")


# --- the token ----------------------------------------------------------------------------------

def test_every_route_of_the_spec_refuses_a_missing_or_wrong_token(api):
    spec = api.call("GET", "/openapi.json").json()
    assert api.client.get("/openapi.json").status_code == 401
    wrong = ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
             {"Cookie": f"{COOKIE}=forged"})
    n = 0
    for path, methods in spec["paths"].items():
        concrete = path.replace("{instance_id}", "1").replace("{queue}", "default").replace(
            "{name}", "default").replace("{job_id}", "1")
        for method in methods:
            for headers in wrong:
                n += 1  # each from its own address: wrong tokens from one address are throttled
                r = api.client_from(f"10.0.{n // 250}.{n % 250}").request(method.upper(), concrete, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
    # And the spec says so: every operation is secured by the bearer token, and by nothing else
    for methods in spec["paths"].values():
        for op in methods.values():
            assert op["security"] == [{"HTTPBearer": []}]


def test_pages_answer_a_stranger_with_the_login_form_and_a_session_opens_them(api):
    browser = api.browser()
    # Given no session, a page is refused with the login form
    r = browser.get("/ui/status")
    assert r.status_code == 401 and '<form method="post" action="/login">' in r.text
    assert browser.get("/ui/static/app.js").status_code == 401
    assert browser.get("/ui/fragments/status").status_code == 401
    # When the wrong token is posted, no cookie is set
    r = browser.post("/login", data={"token": "nope", "next": "/ui/jobs"}, follow_redirects=False)
    assert r.status_code == 401 and "Wrong token" in r.text and COOKIE not in r.cookies
    # When the right one is posted, the session cookie is set and the page asked for follows
    r = browser.post("/login", data={"token": TOKEN, "next": "/ui/jobs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and TOKEN not in set_cookie
    assert "Path=/ui;" in set_cookie
    # Then pages, fragments and static files accept the session
    assert browser.get("/ui/jobs").status_code == 200
    assert browser.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    # And a login never redirects off the site
    r = browser.post("/login", data={"token": TOKEN, "next": "https://evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/status"


# --- instances ----------------------------------------------------------------------------------

def test_a_fresh_install_is_seeded_from_worker_properties(api):
    assert api.call("GET", "/instances").json() == [
        {**default_instance(api), "type": "default", "queues": ["default"], "concurrency": {"min": 2, "max": 2},
         "enabled": True}]
    assert [t.name for t in desired_types(api.ctx.dbs.provisioning)] == ["default"]


def test_instances_are_created_read_scaled_enabled_and_deleted(api):
    # When an instance is created with two queues
    r = api.call("POST", "/instances", json={"type": "launcher", "queues": ["launch", "launch.slow"],
                                             "concurrency": {"min": 1, "max": 3}})
    assert r.status_code == 201, r.text
    inst = r.json()
    assert (inst["type"], inst["queues"], inst["concurrency"], inst["enabled"]) == (
        "launcher", ["launch", "launch.slow"], {"min": 1, "max": 3}, True)
    iid = inst["id"]
    # Then it is listed, readable, its queues are declared, and subscribers would run it
    assert api.call("GET", f"/instances/{iid}").json() == inst
    assert {"launch", "launch.slow"} <= {q["name"] for q in api.call("GET", "/queues").json()}
    assert [(t.name, t.queues, t.min, t.max) for t in desired_types(api.ctx.dbs.provisioning)] == [
        ("default", ("default",), 2, 2), ("launcher", ("launch", "launch.slow"), 1, 3)]
    # When a second instance of the same type is asked for, it is refused
    r = api.call("POST", "/instances", json={"type": "launcher", "queues": ["other"]})
    assert r.status_code == 409 and "exists already" in r.json()["detail"]
    assert "other" not in {q["name"] for q in api.call("GET", "/queues").json()}
    # When it is autoscaled, disabled, started (= enabled) and started again (= one more process)
    assert api.call("PUT", f"/instances/{iid}/autoscale", json={"min": 0, "max": 5}).json()["concurrency"] == {
        "min": 0, "max": 5}
    assert api.call("POST", f"/instances/{iid}/disable").json()["enabled"] is False
    assert [t.name for t in desired_types(api.ctx.dbs.provisioning)] == ["default"]
    started = api.call("POST", f"/instances/{iid}/start").json()
    assert started["enabled"] is True and started["concurrency"] == {"min": 0, "max": 5}
    assert api.call("POST", f"/instances/{iid}/start").json()["concurrency"] == {"min": 1, "max": 6}
    assert api.call("POST", f"/instances/{iid}/disable").json()["enabled"] is False
    assert api.call("POST", f"/instances/{iid}/enable").json()["enabled"] is True
    # And start stops at the most processes allowed
    api.call("PUT", f"/instances/{iid}/autoscale", json={"min": 256, "max": 256})
    r = api.call("POST", f"/instances/{iid}/start")
    assert r.status_code == 409 and "most processes allowed (256)" in r.json()["detail"]
    # When it is deleted, it is gone, and its queues stay declared
    r = api.call("DELETE", f"/instances/{iid}")
    assert r.status_code == 200 and r.json()["type"] == "launcher"
    assert api.call("GET", f"/instances/{iid}").status_code == 404
    assert "launch" in {q["name"] for q in api.call("GET", "/queues").json()}


@pytest.mark.parametrize("method,suffix,body", [
    ("GET", "", None), ("DELETE", "", None), ("POST", "/enable", None), ("POST", "/disable", None),
    ("POST", "/start", None), ("PUT", "/autoscale", {"min": 1, "max": 1}), ("PUT", "/queues/default", None),
    ("DELETE", "/queues/default", None)])
def test_an_unknown_instance_is_404_on_every_route(api, method, suffix, body):
    r = api.call(method, f"/instances/999{suffix}", json=body)
    assert r.status_code == 404 and r.json()["detail"] == "no instance 999"


@pytest.mark.parametrize("body,says", [
    ({"type": "x", "queues": ["q"], "concurrency": {"min": -1, "max": 2}}, "greater than or equal to 0"),
    ({"type": "x", "queues": ["q"], "concurrency": {"min": 3, "max": 2}}, "min (3) must not be greater than max (2)"),
    ({"type": "x", "queues": ["q"], "concurrency": {"min": 0, "max": 0}}, "greater than or equal to 1"),
    ({"type": "x", "queues": ["q"], "concurrency": {"min": 1, "max": 100000}}, "less than or equal to 256"),
    ({"type": "x", "queues": []}, "at least 1 item"),
    ({"type": "x", "queues": ["q", "q"]}, "a queue is listed twice"),
    ({"type": "bad name", "queues": ["q"]}, "should match pattern"),
    ({"type": "x", "queues": ["bad/queue"]}, "should match pattern"),
    ({"type": "x", "queues": ["q"], "colour": "red"}, "Extra inputs are not permitted"),
    ({"queues": ["q"]}, "Field required"),
])
def test_bad_instances_are_refused_with_a_clear_422_and_nothing_written(api, body, says):
    before = api.call("GET", "/instances").json()
    r = api.call("POST", "/instances", json=body)
    assert r.status_code == 422, r.text
    assert says in json.dumps(r.json())
    assert api.call("GET", "/instances").json() == before


def test_malformed_json_is_422_and_autoscale_checks_its_pair(api):
    iid = default_instance(api)["id"]
    r = api.call("POST", "/instances", content=b'{"type": "x", "queues": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    for bad, says in (({"min": -1, "max": 1}, "greater than or equal to 0"), ({"min": 4, "max": 3}, "min (4)"),
                      ({"min": 1}, "Field required"), ({"min": "many", "max": 2}, "valid integer")):
        r = api.call("PUT", f"/instances/{iid}/autoscale", json=bad)
        assert r.status_code == 422 and says in r.text, r.text
    assert default_instance(api)["concurrency"] == {"min": 2, "max": 2}
    assert api.call("GET", "/instances/0").status_code == 422
    assert api.call("GET", "/instances/not-a-number").status_code == 422


def test_an_instance_consumes_and_cancels_queues(api):
    iid = default_instance(api)["id"]
    # When it is told to consume a new queue, the queue is declared and consumed, once
    for _ in range(2):
        r = api.call("PUT", f"/instances/{iid}/queues/reports.daily")
        assert r.status_code == 200 and r.json()["queues"] == ["default", "reports.daily"]
    with open_transport(api.settings.mq, api.layout) as t:
        assert t.depths(["reports.daily"])[0].ready == 0  # exists on the transport
    # When it cancels it, it consumes only its first queue again
    assert api.call("DELETE", f"/instances/{iid}/queues/reports.daily").json()["queues"] == ["default"]
    # And cancelling what it does not consume, or its only queue, is refused
    assert api.call("DELETE", f"/instances/{iid}/queues/reports.daily").status_code == 404
    r = api.call("DELETE", f"/instances/{iid}/queues/default")
    assert r.status_code == 409 and "only queue" in r.json()["detail"]
    assert api.call("PUT", f"/instances/{iid}/queues/bad%2Fname").status_code in (404, 422)
    # And after a cancel in the middle, a new queue still goes last
    for q in ("a", "b"):
        api.call("PUT", f"/instances/{iid}/queues/{q}")
    api.call("DELETE", f"/instances/{iid}/queues/a")
    assert api.call("PUT", f"/instances/{iid}/queues/c").json()["queues"] == ["default", "b", "c"]


# --- queues -------------------------------------------------------------------------------------

def test_queues_are_declared_listed_with_depths_and_deleted_only_when_unused_and_empty(api):
    # When a queue is declared, it is created (201), then found again (200)
    r = api.call("POST", "/queues", json={"name": "billing"})
    assert r.status_code == 201 and r.json()["consumed_by"] == [] and r.json()["ready"] == 0
    assert r.json()["exchange"] == api.settings.mq.exchange and r.json()["routing_key"] == "billing"
    assert api.call("POST", "/queues", json={"name": "billing", "routing_key": "billing"}).status_code == 200
    # A binding the transport cannot make is refused
    r = api.call("POST", "/queues", json={"name": "x", "exchange": "elsewhere"})
    assert r.status_code == 422 and "exchange" in r.text
    r = api.call("POST", "/queues", json={"name": "x", "routing_key": "y"})
    assert r.status_code == 422 and "routing_key" in r.text
    # Then the listing has depths and consumers
    listed = {q["name"]: q for q in api.call("GET", "/queues").json()}
    assert listed["default"]["consumed_by"] == ["default"] and listed["default"]["depth_error"] is None
    assert set(listed) == {"default", "billing"}
    # When a consumed queue is deleted, it is refused
    r = api.call("DELETE", "/queues/default")
    assert r.status_code == 409 and "consumed by default" in r.json()["detail"]
    # When a queue holds messages, deleting it is refused too
    with open_transport(api.settings.mq, api.layout) as t:
        t.publish([OutgoingMessage("billing", b"{}", "m1")])
    assert api.call("GET", "/queues/billing").json()["ready"] == 1
    r = api.call("DELETE", "/queues/billing")
    assert r.status_code == 409 and "holds 1 message" in r.json()["detail"]
    # When it is empty and unused, it goes
    r = api.call("POST", "/queues", json={"name": "scratch"})
    assert api.call("DELETE", "/queues/scratch").status_code == 200
    assert api.call("GET", "/queues/scratch").status_code == 404
    assert api.call("DELETE", "/queues/scratch").status_code == 404


def test_nothing_is_half_applied_when_the_queue_is_down(home):
    def down():
        raise ConnectionClosed("broker unreachable (test)")

    api = Admin(home, queues=SharedTransport(None, None, opener=down))
    try:
        before = (api.call("GET", "/instances").json(), [q.name for q in api.ctx.store.queues()])
        r = api.call("POST", "/queues", json={"name": "newq"})
        assert r.status_code == 503 and "broker unreachable" in r.json()["detail"]
        r = api.call("POST", "/instances", json={"type": "launcher", "queues": ["launch"]})
        assert r.status_code == 503
        r = api.call("PUT", f"/instances/{default_instance(api)['id']}/queues/newq")
        assert r.status_code == 503
        assert (api.call("GET", "/instances").json(), [q.name for q in api.ctx.store.queues()]) == before
        # Reading still works, saying why the depths are missing
        listed = api.call("GET", "/queues").json()
        assert listed[0]["ready"] is None and "broker unreachable" in listed[0]["depth_error"]
        assert api.call("GET", "/status").json()["depth_error"]
    finally:
        api.close()


# --- jobs ---------------------------------------------------------------------------------------

def test_jobs_are_submitted_listed_read_and_counted(api):
    # When a job is submitted, it is stored pending through submit()
    r = api.call("POST", "/jobs", json={"action": "echo", "arguments": {"x": [1, 2]}, "idempotency_key": "k1"})
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert r.json()["created"] is True and job["status"] == "pending" and job["queue"] == "default"
    assert job["arguments"] == {"x": [1, 2]} and job["max_attempts"] == api.settings.worker.max_attempts
    # A second submit with the same key returns the first job
    again = api.call("POST", "/jobs", json={"action": "echo", "idempotency_key": "k1"})
    assert again.status_code == 200 and again.json() == {"created": False, "job": job}
    # Then it can be read, listed and filtered
    assert api.call("GET", f"/jobs/{job['job_id']}").json() == job
    assert [j["job_id"] for j in api.call("GET", "/jobs", params={"status": "pending"}).json()] == [job["job_id"]]
    assert api.call("GET", "/jobs", params={"status": "succeeded"}).json() == []
    assert api.call("GET", "/jobs/987654").status_code == 404
    assert api.call("GET", "/jobs", params={"status": "bogus"}).status_code == 422
    assert api.call("GET", "/jobs", params={"limit": 0}).status_code == 422
    # Bad submissions are refused with the reason, and nothing is stored
    for body, says in (({"action": "echo", "queue": "nowhere"}, "unknown queue 'nowhere'"),
                       ({"action": ""}, "at least 1 character"), ({"arguments": {}}, "Field required"),
                       ({"action": "echo", "max_attempts": 0}, "greater than or equal to 1")):
        r = api.call("POST", "/jobs", json=body)
        assert r.status_code == 422 and says in r.text, r.text
    assert api.call("GET", "/jobs/stats").json()["counts"]["pending"] == 1
    # A queue an instance consumes (not in worker.properties) takes jobs too
    iid = default_instance(api)["id"]
    api.call("PUT", f"/instances/{iid}/queues/extra")
    assert api.call("POST", "/jobs", json={"action": "noop", "queue": "extra"}).json()["job"]["queue"] == "extra"


def test_a_list_of_jobs_is_submitted_in_one_request(api):
    # When a client with many jobs posts them as a list, keyed and unkeyed mixed
    first = api.call("POST", "/jobs", json={"action": "echo", "idempotency_key": "known"}).json()["job"]
    body = [{"action": "noop"}, {"action": "echo", "arguments": {"n": 1}, "max_attempts": 2},
            {"action": "echo", "idempotency_key": "known"}, {"action": "echo", "idempotency_key": "new"}]
    r = api.call("POST", "/jobs", json=body)
    # Then each is answered in order, as stored, and a known key names its first job
    assert r.status_code == 201, r.text
    out = r.json()
    assert [o["created"] for o in out] == [True, True, False, True]
    assert out[2]["job"] == first
    assert out[1]["job"]["arguments"] == {"n": 1} and out[1]["job"]["max_attempts"] == 2
    for o in out:
        assert api.call("GET", f"/jobs/{o['job']['job_id']}").json() == o["job"]
    pending = api.call("GET", "/jobs/stats").json()["counts"]["pending"]
    # And one invalid job refuses the whole list, naming it, with nothing stored
    for bad, says in (([{"action": "noop"}, {"action": "echo", "queue": "nowhere"}], "job 1: unknown queue"),
                      ([{"action": "noop"}, {"arguments": {}}], "Field required"),
                      ([], "a list of 1 to"), ([{"action": "noop"}] * 1001, "a list of 1 to")):
        r = api.call("POST", "/jobs", json=bad)
        assert r.status_code == 422 and says in r.text, r.text
    r = api.call("POST", "/jobs", json=[{"action": "noop"}, {"arguments": {}}])
    assert r.json()["detail"][0]["loc"] == ["body", 1, "action"]
    assert api.call("GET", "/jobs/stats").json()["counts"]["pending"] == pending


def test_a_queue_created_a_moment_ago_takes_jobs_at_once(api):
    # Given a submit that filled the desired-state cache
    assert api.call("POST", "/jobs", json={"action": "noop"}).status_code == 201
    # When a queue is added to an instance and a job is sent to it right away
    iid = default_instance(api)["id"]
    api.call("PUT", f"/instances/{iid}/queues/fresh")
    # Then it is taken (the refusal against the cached copy is checked against a fresh one)
    r = api.call("POST", "/jobs", json={"action": "noop", "queue": "fresh"})
    assert r.status_code == 201 and r.json()["job"]["queue"] == "fresh"
    r = api.call("POST", "/jobs", json=[{"action": "noop", "queue": "fresher"}])
    assert r.status_code == 422


def test_stats_reset_counts_only_later_jobs_and_persists_across_a_restart(api):
    for _ in range(3):
        api.call("POST", "/jobs", json={"action": "noop"})
    stats = api.call("GET", "/jobs/stats").json()
    assert stats["since_ms"] == 0 and stats["counts"]["pending"] == 3 and stats["total"] == 3
    # When the counts are reset, they start from nothing (the jobs themselves stay)
    reset = api.call("POST", "/jobs/stats/reset").json()
    assert reset["since_ms"] > 0 and reset["total"] == 0
    assert len(api.call("GET", "/jobs").json()) == 3
    api.call("POST", "/jobs", json={"action": "noop"})
    assert api.call("GET", "/jobs/stats").json()["counts"]["pending"] == 1
    # And after a restart the reset still holds
    again = api.restart()
    try:
        assert again.call("GET", "/jobs/stats").json() == {**reset, "counts": {**reset["counts"], "pending": 1},
                                                             "total": 1}
    finally:
        again.close()


# --- desired state survives a restart -----------------------------------------------------------

def test_the_desired_state_persists_across_an_app_restart_and_is_seeded_only_once(api):
    iid = default_instance(api)["id"]
    api.call("PUT", f"/instances/{iid}/autoscale", json={"min": 1, "max": 4})
    created = api.call("POST", "/instances", json={"type": "sync", "queues": ["sync"], "enabled": False}).json()
    api.call("POST", "/queues", json={"name": "spare"})
    before = (api.call("GET", "/instances").json(), api.call("GET", "/queues").json())
    again = api.restart()
    try:
        assert (again.call("GET", "/instances").json(), again.call("GET", "/queues").json()) == before
        # When every instance is deleted, a restart does not bring worker.properties' back
        for inst in again.call("GET", "/instances").json():
            assert again.call("DELETE", f"/instances/{inst['id']}").status_code == 200
        third = again.restart()
        try:
            assert third.call("GET", "/instances").json() == []
            assert desired_types(third.ctx.dbs.provisioning, third.settings) == []
        finally:
            third.close()
    finally:
        again.close()
    assert created["enabled"] is False


def test_desired_types_seeds_a_database_no_admin_has_touched(tmp_path):
    home = sh.make_home(tmp_path, worker_props={"worker.types": "default, launcher",
                                                "worker.launcher.queues": "launch, launch.slow",
                                                "worker.launcher.min": 0, "worker.launcher.max": 4})
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        types = desired_types(dbs.provisioning, settings)
        assert [(t.name, t.queues, t.min, t.max) for t in types] == [
            ("default", ("default",), 2, 2), ("launcher", ("launch", "launch.slow"), 0, 4)]
        assert InstanceStore(dbs.provisioning).ensure_seeded(settings) is False  # once only
    finally:
        dbs.close()


# --- status, metrics, pages ---------------------------------------------------------------------

def beat_like_a_subscriber(api, workers):
    api.ctx.dbs.heartbeats.beat("subscriber", "s1", ttl_s=30, details={
        "workers": [{"name": f"default.{n}", "type": "default", "pid": 1000 + n, "state": state,
                     "inflight": 0, "tasks_done": 0, "reincarnations": 0} for n, state in enumerate(workers, 1)],
        "stats": {"received": 5, "succeeded": 4, "failed": 1}, "pending": {"default": 0}, "inflight": 0,
        "recording": 0, "connected": True, "reconnects": 0})


def test_status_shows_the_stat_figures_and_desired_against_on_line(api):
    # Given a subscriber beating with two workers on-line and one stopping
    beat_like_a_subscriber(api, ["idle", "working", "stopping"])
    status = api.call("GET", "/status").json()
    # Then the clusters are the Stat API's figures
    expected = [s.as_dict() for s in Stat.get_all(api.settings, api.layout, dbs=api.ctx.dbs, depths=api.ctx.queues)]
    strip = lambda cs: [{k: v for k, v in c.items() if k != "uptime_s"} for c in cs]  # noqa: E731
    assert strip(status["clusters"]) == strip(expected) and len(expected) == 1
    # And the default type shows desired 2-2 against 2 on-line, per type and per queue
    inst = next(i for i in status["instances"] if i["type"] == "default")
    assert inst["concurrency"] == {"min": 2, "max": 2} and inst["online"] == 2
    queue = next(q for q in status["queues"] if q["name"] == "default")
    assert queue["workers_online"] == 2 and queue["workers_desired"] == {"min": 2, "max": 2}
    assert queue["ready"] == 0 and queue["consumers"] == 0
    assert status["health"]["state"] in ("OK", "WARNING", "CRITICAL") and "jobs" in status
    # When start is clicked, desired rises at once; on-line follows only once subscribers act
    api.call("POST", f"/instances/{inst['id']}/start")
    after = next(i for i in api.call("GET", "/status").json()["instances"] if i["type"] == "default")
    assert after["concurrency"] == {"min": 3, "max": 3} and after["online"] == 2
    # And the status page renders the same figures
    page = api.call("GET", "/ui/status").text
    assert 'data-type="default"' in page and '<td class="desired">3–3</td><td class="online">2</td>' in page


def test_metrics_are_token_protected_prometheus_text(api):
    api.call("POST", "/jobs", json={"action": "noop"})
    assert api.client.get("/metrics").status_code == 401
    r = api.call("GET", "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'enstratus_workers_up{source="provisioning"} 1.0' in r.text
    assert 'enstratus_workers_jobs{status="pending"} 1.0' in r.text


def test_pages_render_and_escape_what_users_typed(api):
    # Given a job whose action, worker and error hold markup (stored by a tool that checks nothing)
    job_id = stored_job(api, action="<script>alert(1)</script>", worker='"><img src=x onerror=alert(2)>',
                        error="<b>boom</b>", status="failed", result='{"html": "<i>x</i>"}')
    # Then every page and fragment shows it as text
    for path in ("/ui/jobs", "/ui/fragments/jobs", f"/ui/fragments/job/{job_id}"):
        page = api.call("GET", path).text
        assert "<script>alert(1)" not in page and "<img" not in page and "<b>boom" not in page, path
        assert "<i>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in api.call("GET", "/ui/jobs").text
    assert "&lt;b&gt;boom&lt;/b&gt;" in api.call("GET", f"/ui/fragments/job/{job_id}").text
    launch = api.call("GET", "/ui/launch").text
    assert '<option value="default" selected>default</option>' in launch and '<option value="echo">' in launch
    r = api.call("GET", "/ui/status")
    assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    # the referrer stays on the site, but same-origin forms keep their Origin (no-referrer makes it "null")
    assert r.headers["referrer-policy"] == "same-origin"
    assert api.call("GET", f"/ui/fragments/job/{job_id}").status_code == 200
    assert api.call("GET", "/ui/fragments/job/99").status_code == 404


def test_a_body_over_the_limit_is_refused_before_it_is_read(api):
    big = {"action": "noop", "arguments": {"blob": "x" * (api.admin.max_body + 1)}}
    assert api.call("POST", "/jobs", json=big).status_code == 413

    def chunks():
        yield b'{"action": "noop", "arguments": {"blob": "'
        for _ in range(api.admin.max_body // 65536 + 1):
            yield b"x" * 65536
        yield b'"}}'
    r = api.call("POST", "/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert api.call("GET", "/jobs").json() == []


# --- admin.cfg and the token file ---------------------------------------------------------------

def test_the_token_file_is_generated_private_and_refused_when_exposed(tmp_path):
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    settings = load_admin_settings(layout)
    token = load_token(settings).reveal()
    path = layout.run_dir / "admin.token"
    assert settings.token_file == path and len(token) >= 32
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_token(settings).reveal() == token  # stable across starts
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group and others"):
        load_token(settings)


def test_a_token_in_admin_cfg_needs_a_private_file_and_some_length(tmp_path):
    home = sh.make_home(tmp_path)
    cfg = home / "services" / "worker" / "classes" / "admin.cfg"
    sh.set_keys(cfg, {"token": TOKEN})
    cfg.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_admin_settings(Layout(home))
    assert "key 'token'" in str(err.value) and "chmod 600" in str(err.value) and TOKEN not in str(err.value)
    cfg.chmod(0o600)
    assert load_token(load_admin_settings(Layout(home))).reveal() == TOKEN
    sh.set_keys(cfg, {"token": "short"})
    with pytest.raises(ConfigError, match="at least 16"):
        load_admin_settings(Layout(home))
    sh.set_keys(cfg, {"token": TOKEN, "port": "99999"})
    with pytest.raises(ConfigError, match="port"):
        load_admin_settings(Layout(home))


# --- the daemon's Service contract --------------------------------------------------------------

def test_the_service_serves_until_asked_to_stop(home):
    from enstratus_workers.daemons.admin import AdminService

    layout = Layout(home)
    admin = load_admin_settings(layout)
    service = AdminService(load_settings(layout), layout, "t1", replace(admin, port=0))
    with serving(service):
        assert service.url_file.read_text().strip() == service.url.rstrip("/") + "/"
        req = urllib.request.Request(service.url + "instances", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)[0]["type"] == "default"
    assert not service.url_file.exists()


# --- the same on the production backends --------------------------------------------------------

@pytest.mark.rabbitmq
@pytest.mark.mysql
def test_the_api_over_rabbitmq_and_mariadb(tmp_path, amqp_names, mysql_url):
    home = sh.make_home(tmp_path, amqp=amqp_names, mysql_url=mysql_url)
    set_token(home)
    api = Admin(home)
    try:
        # Given the install seeded from worker.properties, on MariaDB
        iid = default_instance(api)["id"]
        # When an instance and a queue are created, they are declared on RabbitMQ with depths
        r = api.call("POST", "/instances", json={"type": "launcher", "queues": ["launch"],
                                                 "concurrency": {"min": 1, "max": 2}})
        assert r.status_code == 201, r.text
        assert api.call("POST", "/queues", json={"name": "billing"}).status_code == 201
        listed = {q["name"]: q for q in api.call("GET", "/queues").json()}
        assert listed["launch"]["ready"] == 0 and listed["launch"]["depth_error"] is None
        assert listed["launch"]["consumed_by"] == ["launcher"]
        # And the refusals hold: a consumed queue, a queue holding a message
        assert api.call("DELETE", "/queues/launch").status_code == 409
        with open_transport(api.settings.mq, api.layout) as t:
            t.publish([OutgoingMessage("billing", b"{}", "m1")])
        assert sh.wait_until(lambda: api.call("GET", "/queues/billing").json()["ready"] == 1, 10)
        assert api.call("DELETE", "/queues/billing").status_code == 409
        # When scaled, started and given a queue, the desired state says so
        api.call("PUT", f"/instances/{iid}/autoscale", json={"min": 1, "max": 3})
        api.call("POST", f"/instances/{iid}/start")
        api.call("PUT", f"/instances/{iid}/queues/billing")
        assert [(t.name, t.queues, t.min, t.max) for t in desired_types(api.ctx.dbs.provisioning)] == [
            ("default", ("default", "billing"), 2, 4), ("launcher", ("launch",), 1, 2)]
        # And jobs and their counts work on MariaDB, the reset surviving a restart
        assert api.call("POST", "/jobs", json={"action": "noop", "queue": "billing"}).status_code == 201
        since = api.call("POST", "/jobs/stats/reset").json()["since_ms"]
        api = api.restart()
        assert api.call("GET", "/jobs/stats").json() == {"since_ms": since, "total": 0, "counts": {
            s: 0 for s in ("pending", "queued", "running", "succeeded", "failed", "dead", "cancelled")}}
        assert len(api.call("GET", "/instances").json()) == 2
    finally:
        api.close()


# --- the init script's view of the HTTP daemon --------------------------------------------------

def test_the_init_script_runs_the_http_daemon_unless_told_not_to_or_not_installed(tmp_path):
    from enstratus_workers.runtime.initscript import InitScript

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for daemon in ("publisher", "subscriber", "pinger", "admin"):
        (bin_dir / daemon).write_text("#!/bin/sh\n")
        (bin_dir / daemon).chmod(0o755)
    layout = Layout(tmp_path)
    assert InitScript(layout, bin_dir, None).daemons == ("publisher", "subscriber", "pinger", "admin")
    assert InitScript(layout, bin_dir, None, with_http=False).daemons == ("publisher", "subscriber", "pinger")
    (bin_dir / "admin").unlink()  # an install from before the HTTP daemon
    assert InitScript(layout, bin_dir, None).daemons == ("publisher", "subscriber", "pinger")
