"""``POST /jobs/{id}/cancel``: 200 with the job, 404 for an unknown one, a clear 409 for a
finished one (nothing changed)."""

from __future__ import annotations

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Outcome, Started
from tests.unit.admin_helpers import api, home, stored_job  # noqa: F401 (fixtures)

OWNER = "subscriber@a:1:aa"


def test_cancel_answers_with_the_job_404_for_an_unknown_one_and_409_for_a_finished_one(api):
    jobs = api.ctx.dbs.jobs
    # Given a pending job / When cancelled / Then 200 with the job, cancelled, showing when
    pending = stored_job(api)
    r = api.call("POST", f"/jobs/{pending}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["cancel_requested_ms"] == r.json()["end_timestamp"]
    assert api.call("GET", f"/jobs/{pending}").json() == r.json()
    # Given a running job / Then it is still running, with the request's time: its owner stops it
    running = stored_job(api)
    jobs.mark_started([Started(running, 1, "w@h.1", now_ms(), OWNER)])
    r = api.call("POST", f"/jobs/{running}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["cancel_requested_ms"] > 0
    # Given a finished job / Then 409 naming its status, and nothing changed
    done = stored_job(api)
    jobs.record_outcomes([Outcome(done, 1, "succeeded", "w", 1, 2, "{}", None, OWNER)])
    r = api.call("POST", f"/jobs/{done}/cancel")
    assert r.status_code == 409 and r.json() == {
        "detail": f"job {done} has already finished (succeeded); nothing was cancelled"}
    assert jobs.get(done).cancel_requested_ms is None
    assert api.call("POST", f"/jobs/{pending}/cancel").status_code == 409   # cancelled is finished too
    # and an unknown job is a 404, a job id that is none a 422
    assert api.call("POST", "/jobs/987654/cancel").json() == {"detail": "no job 987654"}
    assert api.call("POST", "/jobs/987654/cancel").status_code == 404
    assert api.call("POST", "/jobs/0/cancel").status_code == 422
