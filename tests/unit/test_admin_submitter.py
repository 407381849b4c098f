"""The admin API's submitter (admin/submitter.py): single ``POST /jobs`` requests that arrive while
a transaction is written share the next one; a lone one is written at once; one refused or
failing job fails alone; a transaction that may have committed is not written again."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pymysql
import sqlalchemy as sa

from enstratus_workers.admin import submitter as sub
from enstratus_workers.admin.submitter import Submitter

from tests.thread_refusal import refuse_one_thread
from tests.unit.admin_helpers import api, home  # noqa: F401 (fixtures)


def _run_all(submitter: Submitter, bodies) -> list:
    """Submit ``bodies`` concurrently from one event loop; each result or exception."""
    async def main():
        return await asyncio.gather(*(submitter.submit(b) for b in bodies), return_exceptions=True)
    return asyncio.run(main())


def test_a_lone_submit_is_written_at_once():
    stored = []
    s = Submitter(lambda bodies: [f"new:{b}" for b in bodies], lambda new: stored.append(list(new)) or new)
    started = time.monotonic()
    assert _run_all(s, ["a"]) == ["new:a"]
    assert stored == [["new:a"]] and s.batches == 1
    assert time.monotonic() - started < 2.0     # no timer: it did not wait for company


def test_submits_arriving_during_a_write_share_the_next_transaction():
    release, writing = threading.Event(), threading.Event()
    batches = []

    def store(new):
        batches.append(list(new))
        if len(batches) == 1:
            writing.set()
            release.wait(10)    # the first transaction is slow: the others queue behind it
        return [n.upper() for n in new]

    s = Submitter(lambda bodies: list(bodies), store)

    async def main():
        first = asyncio.ensure_future(s.submit("j0"))
        while not writing.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(s.submit(f"j{i}")) for i in range(1, 9)]
        await asyncio.sleep(0)            # all eight queued before the first write ends
        while len(s._queue) < 8:
            await asyncio.sleep(0.001)
        release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    # Then the eight that waited went in one transaction, each answered with its own job
    assert batches[0] == ["j0"] and sorted(batches[1]) == [f"j{i}" for i in range(1, 9)] and len(batches) == 2
    assert results == [f"J{i}" for i in range(9)]


def test_a_refused_job_fails_alone_and_a_failing_one_is_found_by_writing_each_alone():
    def validate(bodies):
        return [ValueError(f"refused {b}") if b == "refused" else b for b in bodies]

    def store(new):
        if "boom" in new:
            raise sa.exc.IntegrityError("INSERT", {}, Exception("boom"))
        return [f"id-{n}" for n in new]

    s = Submitter(validate, store)
    s._running = True                  # hold the thread back until all four queued

    async def main():
        futures = [asyncio.ensure_future(s.submit(b)) for b in ("ok1", "refused", "boom", "ok2")]
        await asyncio.sleep(0.01)
        threading.Thread(target=s._run, daemon=True).start()
        return await asyncio.gather(*futures, return_exceptions=True)

    ok1, refused, boom, ok2 = asyncio.run(main())
    assert ok1 == "id-ok1" and ok2 == "id-ok2"
    assert isinstance(refused, ValueError) and "refused refused" in str(refused)
    assert isinstance(boom, sa.exc.IntegrityError)


def test_a_transaction_lost_at_its_commit_is_not_written_again():
    calls = []

    def store(new):
        calls.append(list(new))
        # the connection went during COMMIT (SQLAlchemy names no statement for it): the rows
        # may be stored, so no second copy
        raise sa.exc.OperationalError(None, {}, pymysql.err.OperationalError(2013, "Lost connection"))

    s = Submitter(lambda bodies: list(bodies), store)
    s._running = True

    async def main():
        futures = [asyncio.ensure_future(s.submit(b)) for b in ("a", "b")]
        await asyncio.sleep(0.01)
        threading.Thread(target=s._run, daemon=True).start()
        return await asyncio.gather(*futures, return_exceptions=True)

    a, b = asyncio.run(main())
    assert calls == [["a", "b"]]
    assert isinstance(a, sa.exc.OperationalError) and isinstance(b, sa.exc.OperationalError)


def test_the_thread_ends_when_idle_and_starts_again_for_the_next_submit(monkeypatch):
    monkeypatch.setattr(sub, "IDLE_EXIT_S", 0.05)
    s = Submitter(lambda bodies: list(bodies), lambda new: list(new))
    assert _run_all(s, ["a"]) == ["a"]
    deadline = time.monotonic() + 5
    while s._running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not s._running
    s._thread.join(5)
    assert not s._thread.is_alive()
    assert _run_all(s, ["b"]) == ["b"]


def test_concurrent_api_submits_share_transactions_and_every_job_is_stored(api):  # noqa: F811
    # Given eight clients posting single jobs at once, many times
    n, clients = 80, 8
    answers, errors = [], []

    def client(k):
        try:
            for i in range(k, n, clients):
                r = api.call("POST", "/jobs", json={"action": "noop", "arguments": {"i": i}})
                answers.append((r.status_code, r.json()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # Then each was answered 201 with its own job, stored pending with its arguments
    assert len(answers) == n and {code for code, _ in answers} == {201}
    ids = {body["job"]["job_id"] for _, body in answers}
    assert len(ids) == n
    for _, body in answers:
        stored = api.ctx.dbs.jobs.get(body["job"]["job_id"])
        assert stored.status == "pending" and json.loads(stored.arguments) == body["job"]["arguments"]
    # And the submitter wrote them in transactions of its own, no more than one per job
    assert 1 <= api.app.state.submitter.batches <= n


def test_a_single_job_the_desired_state_refuses_is_answered_422_and_the_next_is_stored(api):  # noqa: F811
    r = api.call("POST", "/jobs", json={"action": "noop", "queue": "no-such-queue"})
    assert r.status_code == 422 and "unknown queue" in r.text
    assert api.call("POST", "/jobs", json={"action": "noop"}).status_code == 201


def test_a_thread_the_os_will_not_give_fails_that_request_and_the_next_one_tries_again(monkeypatch):
    s = Submitter(lambda bodies: list(bodies), lambda new: [n.upper() for n in new])
    refused = refuse_one_thread(monkeypatch, "admin-submitter")
    # Given no thread to be had once: that request fails, it does not wait for ever
    (first,) = _run_all(s, ["a"])
    assert refused and isinstance(first, RuntimeError) and s._queue == []
    # Then the next request starts the thread and is written
    assert _run_all(s, ["b"]) == ["B"]
