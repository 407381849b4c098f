"""``GET /jobs/{id}?wait=S`` (``admin/outcome_watch.py``): the request is answered when the
job's outcome is recorded (woken by the recorder's ring, not by reading the job again and
again), or after ``S`` with the job as it is; bad waits are refused, and the waits held open at
once are bounded. On the real admin daemon (uvicorn on a port of its own), with a safety net so
long that only a ring can end a wait in time."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from enstratus_workers.admin import load_admin_settings, outcome_watch
from enstratus_workers.config import load_settings
from enstratus_workers.daemons.admin import AdminService
from enstratus_workers.db import NewJob
from enstratus_workers.jobs.values import Outcome
from enstratus_workers.layout import Layout
from tests.unit.admin_helpers import TOKEN, home, serving  # noqa: F401  (the fixture)


@pytest.fixture
def daemon(home, monkeypatch):  # noqa: F811
    monkeypatch.setattr(outcome_watch, "SAFETY_NET_S", 30.0)
    layout = Layout(home)
    service = AdminService(load_settings(layout), layout, "w1", replace(load_admin_settings(layout), port=0))
    with serving(service):
        yield service


def _get(service, path: str, timeout: float = 30):
    req = urllib.request.Request(service.url + path.lstrip("/"), headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), {k.lower(): v for k, v in exc.headers.items()}


def _job(service) -> int:
    job, _ = service.app.state.ctx.dbs.jobs.submit(NewJob("noop", "{}", "default", 1))
    return job.job_id


def _record(service, job_id: int, status: str = "succeeded") -> None:
    now = int(time.time() * 1000)
    service.app.state.ctx.dbs.jobs.record_outcomes([Outcome(job_id=job_id, attempt=1, status=status, worker="w",
                                                  owner="o", start_ms=now, end_ms=now, result="1", error=None)])


def _watch(service):
    return service.app.state.outcome_watch


def test_a_wait_is_answered_when_the_outcome_is_recorded(daemon):
    # Given a pending job and a request waiting up to 20 s for it
    job_id = _job(daemon)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_get, daemon, f"/jobs/{job_id}?wait=20")
        assert _waits_on(daemon, 1)
        # When another job's outcome is recorded, Then the wait goes on
        _record(daemon, _job(daemon))
        time.sleep(0.5)
        assert not answer.done()
        # When its own is, Then it is answered with the outcome (the safety net is 30 s off)
        _record(daemon, job_id)
        status, body, _ = answer.result(timeout=15)
    assert status == 200 and body["status"] == "succeeded" and body["job_id"] == job_id
    # and the watch read the waited jobs once per ring, not once per request and interval
    assert 1 <= _watch(daemon).reads <= 2
    assert _waits_on(daemon, 0)


def _waits_on(service, n: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch = getattr(service.app.state, "outcome_watch", None)
        if watch is not None and watch.waiting == n:
            return True
        time.sleep(0.01)
    return False


def test_a_wait_ends_at_its_time_with_the_job_as_it_is_and_an_ended_job_is_answered_at_once(daemon):
    job_id = _job(daemon)
    t0 = time.monotonic()
    status, body, _ = _get(daemon, f"/jobs/{job_id}?wait=0.5")
    assert status == 200 and body["status"] == "pending" and time.monotonic() - t0 >= 0.5
    _record(daemon, job_id, "failed")
    t0 = time.monotonic()
    status, body, _ = _get(daemon, f"/jobs/{job_id}?wait=60")
    assert status == 200 and body["status"] == "failed" and time.monotonic() - t0 < 10
    assert _get(daemon, "/jobs/999999?wait=5")[0] == 404
    assert _waits_on(daemon, 0)


@pytest.mark.parametrize("wait", ["-1", "60.5", "1e9", "nan", "inf", "abc", "", "1,5"])
def test_a_wait_that_is_not_0_to_60_seconds_is_refused(daemon, wait):
    status, body, _ = _get(daemon, f"/jobs/{_job(daemon)}?wait={wait}")
    assert status == 422 and any(e["loc"][-1] == "wait" for e in body["detail"]), body


def test_waits_past_the_limit_are_refused_with_retry_after_and_the_others_are_served(daemon):
    # Given as many waits as one daemon holds (two here), and another route's requests
    watch = daemon.app.state.outcome_watch = outcome_watch.OutcomeWatch(
        daemon.app.state.ctx.dbs.jobs.finished_among, daemon.layout.run_dir, safety_net_s=30.0, max_waits=2)
    jobs = [_job(daemon) for _ in range(3)]
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_get, daemon, f"/jobs/{j}?wait=20") for j in jobs[:2]]
        assert _waits_on(daemon, 2)
        # When one more asks to wait, Then it is refused at once, told when to come back
        status, body, headers = _get(daemon, f"/jobs/{jobs[2]}?wait=20")
        assert status == 503 and headers.get("retry-after") == "1" and "too many waits" in body["detail"]
        # and a plain read is served meanwhile
        assert _get(daemon, f"/jobs/{jobs[2]}")[0] == 200
        for j in jobs[:2]:
            _record(daemon, j)
        assert [f.result(timeout=15)[1]["status"] for f in held] == ["succeeded", "succeeded"]
    assert watch.waiting == 0


def test_many_waits_hold_no_thread_of_the_pool(daemon):
    """The waits are on the event loop: 60 held at once (more than the pool's 40 threads) leave
    the other routes served, and end together on one read of their jobs."""
    jobs = [_job(daemon) for _ in range(60)]
    with ThreadPoolExecutor(60) as pool:
        held = [pool.submit(_get, daemon, f"/jobs/{j}?wait=30") for j in jobs]
        assert _waits_on(daemon, 60, timeout=20)
        t0 = time.monotonic()
        assert _get(daemon, "/jobs?limit=1")[0] == 200
        assert time.monotonic() - t0 < 5
        reads = _watch(daemon).reads
        now = int(time.time() * 1000)
        daemon.app.state.ctx.dbs.jobs.record_outcomes([Outcome(job_id=j, attempt=1, status="succeeded", worker="w",
                                                     owner="o", start_ms=now, end_ms=now, result="1", error=None)
                                             for j in jobs])
        assert {f.result(timeout=20)[1]["status"] for f in held} == {"succeeded"}
    assert _watch(daemon).reads - reads <= 2


def test_the_watch_closes_its_bell_when_no_wait_is_on(daemon, monkeypatch):
    monkeypatch.setattr(outcome_watch, "SAFETY_NET_S", 0.2)
    daemon.app.state.outcome_watch = outcome_watch.OutcomeWatch(
        daemon.app.state.ctx.dbs.jobs.finished_among, daemon.layout.run_dir, safety_net_s=0.2)
    job_id = _job(daemon)
    bells = daemon.layout.run_dir / "bells"
    status, body, _ = _get(daemon, f"/jobs/{job_id}?wait=0.3")
    assert status == 200 and body["status"] == "pending"
    deadline = time.monotonic() + 10
    while list(bells.glob("waiter@admin-*.bell")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(bells.glob("waiter@admin-*.bell"))
