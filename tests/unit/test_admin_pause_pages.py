"""Pause and resume on the Server Status page: each queue's row says whether its jobs are
relayed and has the button that pauses or resumes it; paused accounts are listed with a Resume
button; every click is the API's own route (through ``/ui/api``), and lands in the audit log."""

from __future__ import annotations

from urllib.parse import quote

from enstratus_workers import cli
from tests.unit.admin_helpers import api, home  # noqa: F401 (fixtures)
from tests.unit.test_admin_audit import entries

HOSTILE = '<img src=x onerror=alert(1)>'   # a valid account name: no ',', no '/', no control character


def test_a_queue_is_paused_and_resumed_from_its_row_and_both_are_audited(api):
    browser = api.logged_in_browser()
    # Given the default queue, relayed: its row offers Pause
    page = browser.get("/ui/status").text
    assert '<td class="relay">relayed <button type="button" class="pause" data-kind="queue" data-name="default"' in page
    # When Pause is clicked / Then the row says since when it is paused, and offers Resume
    r = browser.post("/ui/api/queues/default/pause")
    assert r.status_code == 200 and r.json()["paused"] is True
    row = browser.get("/ui/fragments/status").text
    assert '<td class="relay paused">paused since' in row and 'class="resume" data-kind="queue" data-name="default"' in row
    # When Resume is clicked / Then it is relayed again
    assert browser.post("/ui/api/queues/default/resume").json()["paused"] is False
    assert '<td class="relay">relayed' in browser.get("/ui/fragments/status").text
    # And the log has both, from the page, with the pause before and after
    resume, pause = entries(api)[:2]
    assert (pause["action"], pause["via"], pause["target"]) == ("queue.pause", "page", "queue default")
    assert pause["before_state"]["paused"] is False and pause["after_state"]["paused"] is True
    assert (resume["action"], resume["after_state"]["paused"]) == ("queue.resume", False)
    # and an unknown queue is refused (404) and recorded so
    assert browser.post("/ui/api/queues/nosuch/pause").status_code == 404
    assert (entries(api)[0]["action"], entries(api)[0]["status"]) == ("queue.pause", 404)


def test_paused_accounts_are_listed_escaped_with_a_resume_button_and_the_cli_is_audited(api, capsys):
    browser = api.logged_in_browser()
    # Given an account whose name holds markup, paused from the page's form
    assert browser.post(f"/ui/api/accounts/{quote(HOSTILE, safe='')}/pause").json()["paused"] is True
    # Then the status page lists it as text, with a Resume button
    page = browser.get("/ui/status").text
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'class="resume" data-kind="account" data-name="&lt;img src=x onerror=alert(1)&gt;"' in page
    # When the operator resumes it from the CLI / Then it is gone from the list, and the CLI's
    # resume is in the log as theirs
    assert cli.main(["--home", str(api.home), "resume", "--account", HOSTILE]) == 0
    capsys.readouterr()
    assert "no account is paused" in browser.get("/ui/fragments/status").text
    row = entries(api, action="account.resume")[0]
    assert row["via"] == "cli" and row["actor"].startswith("cli:") and row["target"] == f"account {HOSTILE}"
    assert (row["before_state"]["paused"], row["after_state"]["paused"]) == (True, False)
    # And a name no account can have is refused by the API (422 naming it) and the CLI (exit 2)
    assert browser.post("/ui/api/accounts/%20padded/pause").status_code == 422
    assert cli.main(["--home", str(api.home), "pause", "--account", " padded"]) == cli.EXIT_USAGE
    assert entries(api, action="account.pause")[0]["status"] == cli.EXIT_USAGE
