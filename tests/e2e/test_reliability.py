"""No action lost, none run out of control: retries with broker-held backoff, poison actions,
time limits, dead jobs and their re-drive, idempotent submits — through the real daemons."""

from __future__ import annotations

import json

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def submit(home, *args, wait=True, timeout=60):
    extra = ["--wait", "--timeout", str(timeout)] if wait else []
    r = sh.cli(home, "submit", *args, *extra, "--json", timeout=timeout + 30)
    assert r.returncode in (0, 1, 124), r.stderr
    return json.loads(r.stdout)


def events_of(home, job_id):
    return [e["outcome"] for e in json.loads(sh.cli(home, "job", str(job_id), "--json").stdout)["events"]]


def test_failures_retry_die_and_come_back(service_home):
    home = service_home
    assert sh.init(home, "start").returncode == 0

    # A transient failure is retried after a broker-held backoff and then succeeds
    flaky = submit(home, "test.flaky", "--args", '{"succeed_on": 2}')
    assert flaky["status"] == "succeeded" and flaky["attempts"] == 2
    assert events_of(home, flaky["job_id"]) == ["retry", "succeeded"]

    # A permanent failure (ActionError) is not retried
    failed = submit(home, "fail", "--args", '{"message": "no such image"}')
    assert failed["status"] == "failed" and failed["attempts"] == 1

    # An action that kills its worker counts as a failed attempt and ends dead, not in a loop
    poison = submit(home, "test.crash", "--max-attempts", "2")
    assert poison["status"] == "dead" and poison["attempts"] == 2
    assert "worker process died" in poison["error"]

    # A hung action is killed at its time limit (1 s, the action's own override)
    hung = submit(home, "test.hang", "--max-attempts", "1")
    assert hung["status"] == "dead" and "time limit of 1s exceeded" in hung["error"]
    assert hung["end_timestamp"] - hung["start_timestamp"] < 10_000

    # The dead are listed with their dead letters, and the service still runs jobs
    dead = json.loads(sh.cli(home, "dead", "list", "--json").stdout)
    assert {j["job_id"] for j in dead["jobs"]} == {poison["job_id"], hung["job_id"]}
    assert sh.wait_until(lambda: {d["message_id"] for d in json.loads(
        sh.cli(home, "dead", "list", "--json").stdout)["dead_letters"]} >= {str(poison["job_id"])}, 20)
    assert submit(home, "echo", "--args", '{"still": "alive"}')["status"] == "succeeded"

    # The killed workers were reincarnated and counted (the figures come with the next heartbeat)
    def reincarnations():
        return sum(c["reincarnations"] for c in json.loads(sh.cli(home, "status", "--json").stdout)["clusters"])

    assert sh.wait_until(lambda: reincarnations() >= 3, 15), reincarnations()

    # A dead job re-driven gets another round of attempts and succeeds
    stubborn = submit(home, "test.flaky", "--args", '{"succeed_on": 3}', "--max-attempts", "2")
    assert stubborn["status"] == "dead"
    r = sh.cli(home, "dead", "retry", str(stubborn["job_id"]))
    assert r.returncode == 0, r.stderr
    assert sh.wait_until(lambda: json.loads(sh.cli(home, "job", str(stubborn["job_id"]), "--json").stdout)
                         ["status"] == "succeeded", 30)
    assert events_of(home, stubborn["job_id"]) == ["retry", "dead", "succeeded"]


def test_a_second_submit_with_the_same_key_returns_the_first_job(service_home):
    home = service_home
    first = submit(home, "echo", "--idempotency-key", "order-42", wait=False)
    second = submit(home, "noop", "--idempotency-key", "order-42", wait=False)
    assert second["job_id"] == first["job_id"] and second["action"] == "echo"
    assert first["created"] and not second["created"]


def test_a_killed_subscriber_is_brought_back_by_the_pinger_watchdog(service_home):
    import os
    import signal

    home = service_home
    assert sh.init(home, "start").returncode == 0
    pid_file = next((home / "services" / "worker" / "run").glob("subscriber@*.pid"))
    old = int(pid_file.read_text().split()[0])
    # Given jobs waiting, when the subscriber is killed outright
    jobs = [submit(home, "noop", wait=False)["job_id"] for _ in range(5)]
    os.kill(old, signal.SIGKILL)

    def restarted():
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return pid != old and os.path.exists(f"/proc/{pid}")

    # Then the watchdog starts a new one (heartbeat_interval is 1 s here) and nothing is lost
    assert sh.wait_until(restarted, 30), sh.cli(home, "status").stdout
    for job_id in jobs:
        assert sh.wait_until(lambda: json.loads(sh.cli(home, "job", str(job_id), "--json").stdout)
                             ["status"] == "succeeded", 60)
    log = next((home / "services" / "worker" / "log").glob("pinger@*.log")).read_text()
    assert "watchdog" in log and "restarted subscriber@" in log
