"""End to end: the init script starts the real daemons; jobs go in through the CLI; every outcome
is checked; stop leaves no process and no pid file. Once on the embedded default, once on
RabbitMQ + MariaDB."""

from __future__ import annotations

import json

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def home(service_home):
    return service_home


def submit(home, *args):
    r = sh.cli(home, "submit", *args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_service_runs_jobs_end_to_end(home):
    # Given the service started with the init script
    r = sh.init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    pids = set(sh.our_processes(home))
    # When it is started again, nothing is started twice
    r = sh.init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh.init(home, "status").returncode == 0

    # When jobs are submitted through the CLI
    echo = submit(home, "echo", "--args", '{"x": [1, 2]}', "--wait")
    noops = [submit(home, "noop")["job_id"] for _ in range(20)]
    failing = submit(home, "fail", "--args", '{"message": "boom"}', "--wait")
    unknown = submit(home, "no.such.action", "--wait")
    not_object = submit(home, "echo", "--args", "[1, 2]", "--wait")
    slow = submit(home, "sleep", "--args", '{"seconds": 0.2}', "--wait")
    keyed = submit(home, "echo", "--args", '{"k": 1}', "--idempotency-key", "e2e-wait", "--wait")
    again = submit(home, "echo", "--args", '{"k": 1}', "--idempotency-key", "e2e-wait", "--wait")

    # Then each outcome is recorded as it should be
    assert echo["status"] == "succeeded" and echo["result"] == {"x": [1, 2]}
    assert echo["attempts"] == 1 and echo["worker"].startswith("default@")
    assert echo["end_timestamp"] >= echo["start_timestamp"] >= echo["created_timestamp"]
    assert failing["status"] == "failed" and "boom" in failing["error"]
    assert unknown["status"] == "failed" and "unknown action 'no.such.action'" in unknown["error"]
    assert not_object["status"] == "failed" and "JSON object" in not_object["error"]
    assert slow["status"] == "succeeded" and slow["end_timestamp"] - slow["start_timestamp"] >= 200
    # a keyed submit waited for twice: the second finds the first job, finished (no ring will come)
    assert keyed["status"] == again["status"] == "succeeded" and again["job_id"] == keyed["job_id"]

    def all_noops_done():
        jobs = json.loads(sh.cli(home, "jobs", "--json", "--limit", "100").stdout)
        return sum(1 for j in jobs if j["job_id"] in noops and j["status"] == "succeeded") == len(noops)

    assert sh.wait_until(all_noops_done, 30)
    shown = json.loads(sh.cli(home, "job", str(echo["job_id"]), "--json").stdout)
    assert [e["outcome"] for e in shown["events"]] == ["succeeded"]  # one analytics event per attempt

    # And the operator views agree the service is healthy
    status = sh.cli(home, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    daemons = {d["daemon"] for d in json.loads(status.stdout)["daemons"] if d["state"] == "running"}
    assert {"publisher", "subscriber", "pinger", "worker"} <= daemons
    check = sh.wait_until(lambda: (c := _pinger_check(home)).returncode == 0 and c, 15)
    assert check and check.stdout.startswith("ENSTRATUS-WORKERS OK"), _pinger_check(home).stdout

    # When the service is stopped, no process and no pid file is left
    r = sh.init(home, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh.our_processes(home) == []
    assert list((home / "services" / "worker" / "run").glob("*.pid")) == []
    assert sh.init(home, "status").returncode == 3
    assert pids  # the first start did start processes


def _pinger_check(home):
    import subprocess
    return subprocess.run([str(sh.REPO / "services" / "worker" / "bin" / "pinger"), "check"],
                          env=sh.env_for(home), capture_output=True, text=True, timeout=60)


def test_undecodable_message_is_dead_lettered_and_the_service_goes_on(home):
    from enstratus_workers.config import load_settings
    from enstratus_workers.layout import Layout
    from enstratus_workers.mq import open_transport
    from enstratus_workers.mq.base import OutgoingMessage

    assert sh.init(home, "start").returncode == 0
    settings = load_settings(Layout(home))
    # Given a message on the queue that is not an action
    with open_transport(settings.mq, Layout(home)) as t:
        t.declare(["default"])
        t.publish([OutgoingMessage("default", b"\xff not json", "poison-1")])
        # Then it ends up in the dead-letter queue ...
        assert sh.wait_until(lambda: t.depths(["default"])[0].dead == 1, 20)
    # ... and jobs still run
    assert submit(home, "echo", "--args", '{"after": "poison"}', "--wait")["status"] == "succeeded"
