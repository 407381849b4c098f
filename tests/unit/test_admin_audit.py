"""The audit log of operator actions: every change through the API, the pages or the CLI is
recorded with when, who (token fingerprint, page session, Unix user), from where, the answer and
the target before and after; ``GET /audit`` and the Audit page read it, newest first, paged."""

from __future__ import annotations

import getpass
import hashlib
import json
import re

from enstratus_workers import cli
from enstratus_workers.admin.auth import COOKIE
from enstratus_workers.admin.resources import audited_routes
from enstratus_workers.clock import now_ms
from enstratus_workers.db.audit import AuditEntry, state_text
from tests.unit.admin_helpers import TOKEN, api, home, stored_job  # noqa: F401 (fixtures)
from tests.unit.test_admin_history import finished_job

TOKEN_ACTOR = "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]


def entries(api, **query) -> list[dict]:
    r = api.call("GET", "/audit", params=query)
    assert r.status_code == 200, r.text
    return r.json()["entries"]


def default_instance(api) -> dict:
    return next(i for i in api.call("GET", "/instances").json() if i["type"] == "default")


def test_a_change_through_the_api_is_recorded_with_who_where_and_before_and_after(api):
    # Given the default worker type at 2-2
    inst = default_instance(api)
    # When a script starts one more process with the token, from 192.0.2.7
    r = api.client_from("192.0.2.7").post(f"/instances/{inst['id']}/start", headers=api.auth)
    assert r.status_code == 200
    # Then the log's newest row says so: the token by its fingerprint, the address, the answer,
    # and the instance before and after
    (row,) = entries(api)
    assert row["actor"] == TOKEN_ACTOR and TOKEN[:8] not in json.dumps(row)
    assert (row["via"], row["client"], row["action"], row["target"], row["status"]) == (
        "api", "192.0.2.7", "instance.start", f"instance {inst['id']}", 200)
    assert row["before_state"]["concurrency"] == {"min": 2, "max": 2}
    assert row["after_state"]["concurrency"] == {"min": 3, "max": 3}
    # And reads are not recorded
    api.call("GET", "/instances")
    api.call("GET", "/ui/jobs")
    assert [e["action"] for e in entries(api)] == ["instance.start"]


def test_a_refused_change_is_recorded_with_the_refusal(api):
    # When a script asks to consume a queue on an instance that does not exist, and to declare
    # a queue on another exchange
    assert api.call("PUT", "/instances/99/queues/billing").status_code == 404
    assert api.call("POST", "/queues", json={"name": "billing", "exchange": "other"}).status_code == 422
    # Then both are in the log, newest first, with the answer and why
    declare, consume = entries(api)
    assert (consume["action"], consume["target"], consume["status"]) == ("instance.consume", "instance 99, queue billing", 404)
    assert "99" in consume["detail"] and consume["before_state"] is None
    assert (declare["action"], declare["status"]) == ("queue.create", 422) and "exchange" in declare["detail"]


def test_the_pages_actions_are_recorded_under_the_session_that_logged_in(api):
    # Given an operator who logged in from 192.0.2.10
    browser = api.logged_in_browser("192.0.2.10")
    session = browser.cookies.get(COOKIE)
    short = "session:" + hashlib.sha256(session.encode()).hexdigest()[:8]
    inst = default_instance(api)
    # When they click stop, reset the counts, then log out
    assert browser.post(f"/ui/api/instances/{inst['id']}/disable").status_code == 200
    assert browser.post("/ui/api/jobs/stats/reset").status_code == 200
    assert browser.post("/ui/logout", follow_redirects=False).status_code == 303
    # Then the log holds the login, both actions and the logout, all of that session, from its address
    rows = list(reversed(entries(api)))
    assert [r["action"] for r in rows] == ["session.login", "instance.disable", "jobs.stats_reset", "session.logout"]
    assert {r["actor"] for r in rows} == {short} and {r["client"] for r in rows} == {"192.0.2.10"}
    assert [r["via"] for r in rows] == ["page"] * 4
    assert rows[1]["before_state"]["enabled"] is True and rows[1]["after_state"]["enabled"] is False
    assert rows[2]["after_state"]["since_ms"] > rows[2]["before_state"]["since_ms"]
    # And the session id itself is nowhere in the log
    assert session not in json.dumps(rows)


def test_every_change_the_api_offers_is_audited_by_declaration(api):
    # Every route that may change something (not a read) declares its audit action, but submit:
    # jobs are their own record, and a busy platform submits hundreds a second
    spec = api.call("GET", "/openapi.json").json()
    changes = {(m.upper(), p) for p, methods in spec["paths"].items() for m in methods if m != "get"}
    assert changes - set(audited_routes()) == {("POST", "/jobs")}


def test_the_audit_log_is_paged_newest_first_and_filtered_by_action(api):
    # Given seven actions of two kinds
    inst = default_instance(api)
    for _ in range(4):
        api.call("POST", f"/instances/{inst['id']}/start")
    for _ in range(3):
        api.call("POST", "/jobs/stats/reset")
    # When read three at a time / Then the pages follow each other, newest first, to the end
    first = api.call("GET", "/audit", params={"limit": 3}).json()
    second = api.call("GET", "/audit", params={"limit": 3, "before": first["next_before"]}).json()
    third = api.call("GET", "/audit", params={"limit": 3, "before": second["next_before"]}).json()
    ids = [e["audit_id"] for page in (first, second, third) for e in page["entries"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 7 and third["next_before"] is None
    assert [e["action"] for e in first["entries"]] == ["jobs.stats_reset"] * 3
    # And a filter keeps one action
    assert [e["action"] for e in entries(api, action="instance.start")] == ["instance.start"] * 4
    # And bad values are refused naming the parameter
    for param, value in (("action", "DROP TABLE"), ("before", "0"), ("limit", "0"), ("limit", "501")):
        r = api.call("GET", "/audit", params={param: value})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", param], (param, value)
    # And the Audit page shows them, with the filter's actions and a link to the older ones
    page = api.call("GET", "/ui/audit").text
    assert '<option value="instance.start">' in page and '<option value="job.retry">' in page
    fragment = api.call("GET", "/ui/fragments/audit", params={"action": "instance.start"}).text
    assert len(re.findall(r'<tr data-audit=', fragment)) == 4
    assert api.call("GET", "/ui/fragments/audit", params={"action": "Bad"}).status_code == 422


def test_the_audit_page_escapes_what_the_log_holds(api):
    # Given rows holding markup, as another tool (or a user name) may have written them
    api.ctx.audit.record(AuditEntry(now_ms(), "cli:<b>eve</b>", "cli", "<i>host</i>", "job.retry",
                                    "jobs <script>alert(1)</script>", 1, "<img src=x>",
                                    state_text({"k": "<u>v</u>"}), None))
    # Then the Audit page shows all of it as text
    page = api.call("GET", "/ui/audit").text
    for raw in ("<b>eve", "<i>host", "<script>alert", "<img", "<u>v"):
        assert raw not in page, raw
    assert "cli:&lt;b&gt;eve&lt;/b&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_clis_re_drive_is_recorded_as_its_unix_user(api, capsys):
    # Given a dead job
    job_id = finished_job(api, "dead")
    # When the operator re-drives it from the CLI
    assert cli.main(["--home", str(api.home), "dead", "retry", str(job_id), "--json"]) == 0
    capsys.readouterr()
    # Then the log has it, as the Unix user on this host, with the jobs re-driven
    (row,) = entries(api)
    assert (row["actor"], row["via"], row["action"], row["target"], row["status"]) == (
        f"cli:{getpass.getuser()}", "cli", "job.retry", f"jobs {job_id}", 0)
    assert row["after_state"] == {"redriven": [job_id]}


def test_a_cancel_from_the_page_and_from_the_cli_are_recorded(api, capsys):
    # Given two pending jobs
    first, second = (stored_job(api) for _ in range(2))
    # When one is cancelled by the button of its page, and both from the CLI
    browser = api.logged_in_browser()
    assert 'id="cancel"' in api.call("GET", f"/ui/jobs/{first}").text
    assert browser.post(f"/ui/api/jobs/{first}/cancel").json()["status"] == "cancelled"
    assert cli.main(["--home", str(api.home), "cancel", str(first), str(second)]) == cli.EXIT_FAILED
    capsys.readouterr()
    # Then the log holds the page's cancel and both of the CLI's: the first refused (finished)
    rows = {(r["via"], r["target"]): r for r in entries(api, action="job.cancel")}
    page = rows[("page", f"job {first}")]
    assert (page["status"], page["before_state"]["status"], page["after_state"]["status"]) == (200, "pending", "cancelled")
    refused, done = rows[("cli", f"job {first}")], rows[("cli", f"job {second}")]
    assert refused["status"] == cli.EXIT_FAILED and "already finished (cancelled)" in refused["detail"]
    assert (done["status"], done["before_state"], done["after_state"]) == (0, {"status": "pending"}, {"status": "cancelled"})
    # and a cancelled job's page offers no cancel any more
    assert 'id="cancel"' not in api.call("GET", f"/ui/jobs/{first}").text
