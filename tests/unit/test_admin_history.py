"""The pages that show history, through FastAPI's test client on a scratch SQLite home: a job's
page (its attempts as a timeline, its server events), the Dead tab and its re-drive routes
(``POST /jobs/{id}/retry``, ``POST /jobs/dead/retry``: the CLI's function), and the filters of
the jobs list (``GET /jobs`` and the Jobs page), with their refusals."""

from __future__ import annotations

import re

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Event, NewJob, Outcome
from enstratus_workers.db.analytics import ServerEvent
from enstratus_workers.jobs import lifecycle
from enstratus_workers.mq import OutgoingMessage, open_transport
from tests.unit.admin_helpers import api, home, stored_job  # noqa: F401 (fixtures)

OWNER = "subscriber@t:1:aaaa"


def finished_job(api, status: str, *, action="fail", arguments='{"n": 1}', error="boom", queue="default",
                 attempts=1, account=None) -> int:
    """A job whose last attempt (of ``attempts``) ended ``status``, written as the recorder writes
    it (so the totals agree), with an event per attempt."""
    dbs, end = api.ctx.dbs, now_ms()
    job, _ = dbs.jobs.submit(NewJob(action, arguments, queue, attempts, account=account))
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        after = status if last else lifecycle.PENDING
        assert dbs.jobs.record_outcomes([Outcome(job.job_id, attempt, after, "default@h.1", end - 50, end,
                                                 None, error, OWNER)])
        dbs.events.record([Event(job.job_id, action, queue, attempt, lifecycle.event_outcome(after), 40,
                                 "default@h.1", end - (attempts - attempt) * 1000, error=f"{error} #{attempt}",
                                 host="host-a")])
    return job.job_id


def dead_letter(api, job_id: int, queue="default") -> None:
    """The job's message in its queue's dead-letter queue, as the subscriber leaves it."""
    with open_transport(api.settings.mq, api.layout, client_name="test") as t:
        t.declare([queue])
        t.publish([OutgoingMessage(queue, b"{}", str(job_id))])
        consumer = t.consumer([queue], 10)
        (delivery,) = consumer.poll(5, 10)
        consumer.dead_letter(delivery, "attempts exhausted")


def dead_letters(api, queue="default") -> list[str]:
    with open_transport(api.settings.mq, api.layout, client_name="test") as t:
        return [d.message_id for d in t.dead_letters(queue)]


# --- a job's page --------------------------------------------------------------------------------

def test_a_jobs_page_shows_its_attempts_as_a_timeline_and_its_server_events(api):
    # Given a job dead after three attempts, each with its event, and a server event it caused
    job_id = finished_job(api, "dead", attempts=3, error="quota exceeded", account="acme corp")
    api.ctx.dbs.events.record_server_event(ServerEvent("srv-1", "acct-9", "launching", "running", job_id,
                                                       "fail", now_ms()))
    # When the operator opens its page
    page = api.call("GET", f"/ui/jobs/{job_id}")
    # Then it shows the job, its arguments, and one timeline bar and row per attempt, with the
    # worker, host, outcome and each attempt's own error
    assert page.status_code == 200
    assert f'data-job="{job_id}" data-status="dead"' in page.text and "&quot;n&quot;: 1" in page.text
    assert len(re.findall(r'<rect class="bar ', page.text)) == 3
    rows = re.findall(r'<tr data-attempt="(\d)">(.*?)</tr>', page.text)
    assert [n for n, _ in rows] == ["1", "2", "3"]
    assert all("default@h.1" in r and "host-a" in r for _, r in rows)
    assert [re.search(r'class="outcome st-(\w+)"', r).group(1) for _, r in rows] == ["retry", "retry", "dead"]
    assert "quota exceeded #2" in rows[1][1]
    # and the server event, and a button to re-drive it (it is dead)
    assert "srv-1" in page.text and "launching → running" in page.text
    assert 'id="retry"' in page.text
    # and its account, linked to the account's jobs
    assert '<a href="/ui/jobs?account=acme+corp">acme corp</a>' in page.text
    # And its live part is the same, for the page's refresh
    assert api.call("GET", f"/ui/fragments/jobpage/{job_id}").text.count('<rect class="bar ') == 3


def test_a_running_attempt_is_on_the_timeline_and_pruned_ones_are_said_to_be_missing(api):
    # Given a job on its third attempt, running now, whose earlier events were pruned
    job_id = stored_job(api, status="running", attempts=3, start_timestamp=now_ms() - 2000, worker="default@h.2")
    # When its page is opened / Then the running attempt is drawn up to now, and the page says
    # the two before it are not shown, and why
    page = api.call("GET", f"/ui/jobs/{job_id}").text
    assert re.search(r'<tr data-attempt="3">.*?default@h\.2.*?st-running', page)
    assert "2 earlier attempt(s) not shown" in page and "retention.events" in page
    assert 'id="retry"' not in page


def test_an_unknown_job_gets_a_404_page_and_the_page_escapes_what_users_typed(api):
    # Given no job 999 / Then its page, and pages of ids that are no job id, answer 404 pages
    for path in ("/ui/jobs/999", "/ui/jobs/abc", "/ui/jobs/0", "/ui/jobs/99999999999999999999"):
        r = api.call("GET", path)
        assert r.status_code == 404 and 'id="not-found"' in r.text and "<!doctype html>" in r.text, path
    assert api.call("GET", "/ui/fragments/jobpage/999").status_code == 404
    # And a job whose arguments, error and worker hold markup shows them as text
    job_id = stored_job(api, arguments='{"name": "<script>alert(1)</script>"}', error="<b>boom</b>",
                        worker='"><img src=x onerror=alert(2)>', status="failed")
    api.ctx.dbs.events.record([Event(job_id, "noop", "default", 1, "failed", 3, "<i>w</i>", now_ms(),
                                     error="<svg onload=alert(3)>", host="<u>h</u>")])
    page = api.call("GET", f"/ui/jobs/{job_id}").text
    for raw in ("<script>alert(1)", "<b>boom", "<img", "<i>w", "<svg onload", "<u>h"):
        assert raw not in page, raw
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "&lt;svg onload=alert(3)&gt;" in page
    # And without a session the page is the login form, which comes back to it
    r = api.browser().get(f"/ui/jobs/{job_id}")
    assert r.status_code == 401 and f'name="next" value="/ui/jobs/{job_id}"' in r.text


# --- the Dead tab and re-drive ---------------------------------------------------------------------

def test_the_dead_tab_lists_dead_jobs_and_one_is_re_driven_with_its_dead_letter_purged(api):
    # Given two dead jobs (their messages dead-lettered) and a failed one
    dead = [finished_job(api, "dead", error="<b>bad</b>") for _ in range(2)]
    failed = finished_job(api, "failed")
    for job_id in dead:
        dead_letter(api, job_id)
    # When the operator opens the Dead tab / Then both dead jobs are there with a button each
    tab = api.call("GET", "/ui/dead").text
    assert 'data-total="2"' in tab and 'id="retry-all"' in tab
    assert all(f'<button type="button" class="retry start" data-job="{j}"' in tab for j in dead)
    assert f'data-job="{failed}"' not in tab and "<b>bad" not in tab
    # When the first is re-driven (the page calls this through /ui/api)
    r = api.logged_in_browser().post(f"/ui/api/jobs/{dead[0]}/retry")
    # Then it is pending again with another round of attempts, and its dead letter is gone
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert r.json()["max_attempts"] == lifecycle.redrive_max_attempts(1, api.settings.worker.max_attempts)
    assert dead_letters(api) == [str(dead[1])]
    assert 'data-total="1"' in api.call("GET", "/ui/fragments/dead").text


def test_re_driving_refuses_an_unknown_or_living_job_and_all_takes_every_dead_one(api):
    dead = [finished_job(api, "dead") for _ in range(3)]
    failed = finished_job(api, "failed")
    # A job that does not exist: 404; one that is not dead: 409 naming its status; nothing changes
    assert api.call("POST", "/jobs/424242/retry").status_code == 404
    r = api.call("POST", f"/jobs/{failed}/retry")
    assert r.status_code == 409 and "is failed, not dead" in r.json()["detail"]
    assert api.call("POST", "/jobs/0/retry").status_code == 422
    assert api.ctx.dbs.jobs.get(failed).status == "failed"
    # Re-driving all takes every dead job, and says which
    r = api.call("POST", "/jobs/dead/retry")
    assert r.status_code == 200 and sorted(r.json()["redriven"]) == dead
    assert {api.ctx.dbs.jobs.get(j).status for j in dead} == {"pending"}
    # and a second time there is none left
    assert api.call("POST", "/jobs/dead/retry").json()["redriven"] == []
    assert "no dead jobs" in api.call("GET", "/ui/fragments/dead").text


# --- filters -------------------------------------------------------------------------------------

def test_the_jobs_list_filters_by_status_action_queue_account_and_id(api):
    # Given jobs of two actions on two queues, some dead, two of them an account's
    a = finished_job(api, "dead", action="server.launch", account="Zürich AG")
    b = finished_job(api, "succeeded", action="server.launch", account="42")
    c = finished_job(api, "dead", action="echo", account="Zürich AG")
    api.ctx.store.add_queue("billing", None, None)
    d = finished_job(api, "succeeded", action="echo", queue="billing")

    def ids(**query):
        r = api.call("GET", "/jobs", params=query)
        assert r.status_code == 200, r.text
        return [j["job_id"] for j in r.json()]
    # Then each filter narrows the list, newest first, and they combine
    assert ids() == [d, c, b, a]
    assert ids(status="dead") == [c, a]
    assert ids(action="server.launch") == [b, a]
    assert ids(queue="billing") == [d]
    assert ids(status="dead", action="echo") == [c]
    assert ids(job_id=b) == [b] and ids(job_id=b, status="dead") == []
    assert ids(account="Zürich AG") == [c, a] and ids(account="zürich ag") == []   # accounts are exact
    assert ids(account="Zürich AG", action="server.launch") == [a]
    # And the Jobs page's list takes the same filters, saying when nothing matches
    fragment = api.call("GET", "/ui/fragments/jobs", params={"action": "echo", "status": "dead"}).text
    assert re.findall(r'<tr data-job="(\d+)">', fragment) == [str(c)] and "Jobs matching the filters" in fragment
    assert '<td class="account">Zürich AG</td>' in fragment
    assert "no job matches the filters" in api.call("GET", "/ui/fragments/jobs", params={"job_id": 999}).text


BAD_FILTERS = [("status", "zombie"), ("action", "a b"), ("queue", "no/such"), ("job_id", "0"), ("job_id", "x"),
               ("job_id", str(2**63)), ("action", "x" * 201), ("account", ""), ("account", "a/b"),
               ("account", " padded"), ("account", "x" * 101), ("account", "line\nbreak"), ("limit", "501")]


def test_a_bad_filter_is_refused_with_422_naming_it(api):
    for param, value in BAD_FILTERS:
        for path in ("/jobs", "/ui/fragments/jobs")[:1 if param == "limit" else 2]:
            r = api.call("GET", path, params={param: value})
            assert r.status_code == 422, (path, param, value, r.text)
            assert [d["loc"] for d in r.json()["detail"]] == [["query", param]], (path, param, value)


def test_a_fragment_asks_for_a_session_before_it_looks_at_its_filters(api):
    r = api.browser().get("/ui/fragments/jobs", params={"status": "zombie"})
    assert r.status_code == 401
