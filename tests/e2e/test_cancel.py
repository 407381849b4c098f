"""Cancelling jobs in each state, and deferring one, through the real daemons: on the embedded
default and on RabbitMQ + MariaDB (where the message of a queued job is on a real broker).

One service per transport runs every case in turn, as an operator would, with the CLI:
a pending job and a queued one (its message on the broker) never start; a running action that
looks at ``ctx.cancelled()`` stops and is compensated by its own worker; one that ignores the
cancel is killed after ``action.cancel_grace`` and compensated by another worker; a
compensation that raises still ends its job cancelled, with the error; a finished or unknown job
is not cancelled (exit 1). A job deferred three times then succeeding has had one attempt, and
its messages were held by the broker for the delay. And on the local cloud, a ``server.launch``
cancelled while its node boots ends with that node terminated by its compensation.
"""

from __future__ import annotations

import json
import time

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

GRACE = 2   # action.cancel_grace: seconds a stubborn action has before its worker is killed


@pytest.fixture
def cancel_home(service_home):
    sh.set_keys(service_home / "services/worker/classes/worker.properties", {"action.cancel_grace": GRACE})
    return service_home


@pytest.fixture
def dbs(cancel_home):
    """The install's databases, read here as the CLI reads them (a CLI process per look would
    cost the suite a second each)."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    dbs = open_databases(load_settings(Layout(cancel_home)).worker, Layout(cancel_home))
    yield dbs
    dbs.close()


def cli_json(home, *args, ok=(0,)):
    r = sh.cli(home, *args, "--json")
    assert r.returncode in ok, r.stdout + r.stderr
    return json.loads(r.stdout), r.returncode


def job(dbs, job_id) -> dict:
    """The job as ``enstratus-workers job ID --json`` shows it: the row and its events."""
    row = dbs.jobs.get(job_id)
    return {**row.as_dict(), "events": [e.__dict__ for e in dbs.events.for_job(job_id)]}


def submit(dbs, action, arguments) -> int:
    from enstratus_workers.db import NewJob

    return dbs.jobs.submit(NewJob(action, json.dumps(arguments), "default", 3))[0].job_id


def marks(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def ended(dbs, job_id, timeout=60) -> dict:
    assert sh.wait_until(lambda: job(dbs, job_id)["status"] not in ("pending", "queued", "running"),
                         timeout, 0.2), job(dbs, job_id)
    return job(dbs, job_id)


def cancel_once_running(home, dbs, action, path) -> dict:
    """Submit ``action``, cancel it once its row reads running, and return the job as it ended."""
    job_id = submit(dbs, action, {"path": str(path)})
    assert sh.wait_until(lambda: marks(path) and job(dbs, job_id)["status"] == "running", 60, 0.1), \
        job(dbs, job_id)
    answer, code = cli_json(home, "cancel", str(job_id))
    assert code == 0 and answer[0]["verdict"] == "stopping"
    assert answer[0]["job"]["cancel_requested_ms"] is not None
    return ended(dbs, job_id)


def test_cancel_in_each_state_and_a_job_deferred_three_times(cancel_home, dbs, tmp_path):
    home = cancel_home
    # Given a pending job (no daemon runs yet) and a queued one (only the publisher runs)
    pending_file, queued_file = tmp_path / "pending.txt", tmp_path / "queued.txt"
    pending = submit(dbs, "test.append", {"path": str(pending_file)})
    r = sh.cli(home, "cancel", str(pending))
    # When each is cancelled / Then it ends cancelled at once
    assert r.returncode == 0 and r.stdout.strip() == f"job {pending}: cancelled (it was pending)", r.stdout
    assert job(dbs, pending)["status"] == "cancelled"
    publisher = sh.subprocess.run([str(sh.REPO / "services/worker/bin/publisher"), "start"], env=sh.env_for(home),
                                  capture_output=True, text=True, timeout=60)
    assert publisher.returncode == 0, publisher.stdout + publisher.stderr
    queued = submit(dbs, "test.append", {"path": str(queued_file)})
    assert sh.wait_until(lambda: job(dbs, queued)["status"] == "queued", 30, 0.1), job(dbs, queued)
    assert cli_json(home, "cancel", str(queued))[0][0]["verdict"] == "cancelled"

    # When the whole service starts, its subscriber gets the queued job's message
    r = sh.init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr

    # Then the message is acked away as a stale duplicate, and neither action ever ran
    def stale():
        beats = [b.as_dict() for b in dbs.heartbeats.all()]
        return sum(b["details"]["stats"]["stale"] for b in beats if b["daemon"] == "subscriber")

    assert sh.wait_until(lambda: stale() >= 1, 30, 0.2)
    assert not pending_file.exists() and not queued_file.exists()
    assert job(dbs, queued)["status"] == "cancelled"

    # Given a running action that looks at ctx.cancelled() / When cancelled
    cooperative = cancel_once_running(home, dbs, "test.loop", tmp_path / "loop.txt")
    # Then it stopped, its own worker compensated it, and the job shows what was cleaned up
    start, undo = marks(tmp_path / "loop.txt")
    assert (start["what"], undo["what"], undo["pid"]) == ("start", "undo", start["pid"])
    assert cooperative["status"] == "cancelled" and cooperative["error"] is None
    assert cooperative["result"] == {"undone": str(tmp_path / "loop.txt"), "pid": start["pid"]}
    assert [e["outcome"] for e in cooperative["events"]] == ["cancelled"]

    # Given an action that started an instant ago, its row not yet marked running (the
    # subscriber marks it after a second): the cancel ends the row at once
    race_file = tmp_path / "race.txt"
    raced = submit(dbs, "test.loop", {"path": str(race_file)})
    assert sh.wait_until(lambda: marks(race_file), 60, 0.05)
    assert cli_json(home, "cancel", str(raced))[0][0]["verdict"] in ("cancelled", "stopping")
    # Then its worker is told all the same: the action stops and is compensated, and the job
    # shows what was cleaned up, still cancelled, counted once
    assert sh.wait_until(lambda: job(dbs, raced)["result"] is not None, 30, 0.2), job(dbs, raced)
    assert job(dbs, raced)["status"] == "cancelled" and [m["what"] for m in marks(race_file)] == ["start", "undo"]

    # Given a running action that ignores the cancel / When cancelled
    t0 = time.monotonic()
    stubborn = cancel_once_running(home, dbs, "test.stubborn", tmp_path / "stubborn.txt")
    # Then it was killed after the grace period (not its 60 s), and compensated by another worker
    start, undo = marks(tmp_path / "stubborn.txt")
    assert stubborn["status"] == "cancelled" and undo["what"] == "undo" and undo["pid"] != start["pid"]
    assert stubborn["result"]["pid"] == undo["pid"] and time.monotonic() - t0 < 50

    # Given an action whose compensation raises / When cancelled while it runs
    bad = cancel_once_running(home, dbs, "test.bad_undo", tmp_path / "bad.txt")
    # Then it still ends cancelled, with the compensation's error recorded
    assert bad["status"] == "cancelled" and bad["result"] is None
    assert bad["error"] == "compensation failed: RuntimeError: cannot undo: the backup is gone"

    # When a finished job and an unknown one are cancelled / Then each says so, exit 1
    r = sh.cli(home, "cancel", str(bad["job_id"]), "999999999")
    assert r.returncode == 1 and r.stdout.splitlines() == [
        f"job {bad['job_id']}: not cancelled: it had already finished (cancelled)",
        "job 999999999: not cancelled: no such job"], r.stdout
    assert sh.cli(home, "cancel", "0").returncode == 2

    # And the totals count every cancelled job
    assert dbs.jobs.counts()["cancelled"] == 6

    # Given an action that defers its job three times for 1 s, then succeeds
    runs = tmp_path / "defer.txt"
    deferred = ended(dbs, submit(dbs, "test.defer", {"path": str(runs), "times": 3, "delay": 1}))
    # Then it succeeded with one attempt, three deferred events, and the deferrals shown
    assert (deferred["status"], deferred["attempts"], deferred["deferrals"]) == ("succeeded", 1, 3)
    assert [e["outcome"] for e in deferred["events"]] == ["deferred"] * 3 + ["succeeded"]
    # and each next run came no sooner than the delay after the one before (the broker held it)
    times = [float(line.split()[1]) for line in runs.read_text().splitlines()]
    assert len(times) == 4 and all(b - a >= 0.95 for a, b in zip(times, times[1:])), times


@pytest.fixture
def cloud_home(tmp_path):
    """The embedded service with its own KM and a local-cloud credential (as the cloud tests)."""
    from tests.e2e.test_cloud_pinger import running_home

    yield from running_home(tmp_path, {"schedule.server.sync.interval": 0, "action.cancel_grace": GRACE})


def test_a_launch_cancelled_while_its_server_boots_ends_with_that_server_terminated(cloud_home):
    from libcloud.common.types import InvalidCredsError

    from enstratus_workers.cloud import process
    from enstratus_workers.cloud.local_state import LocalCloudState
    from tests.e2e.test_cloud_pinger import ACCOUNT, STATE_DIR

    home = cloud_home
    # Given a launch whose node is booting (an image that reads PENDING for 30 s)
    launch = {"account": ACCOUNT, "image": "local-agent-slow-boot", "size": "small", "name": "doomed"}
    job_id = cli_json(home, "submit", "server.launch", "--args", json.dumps(launch))[0]["job_id"]

    def nodes():
        # before the launch's first call the local cloud has no state yet ("gone"): no node yet
        try:
            return LocalCloudState(home / STATE_DIR).read()["nodes"]
        except (OSError, ValueError, KeyError, InvalidCredsError):
            return {}

    assert sh.wait_until(nodes, 60, 0.2), cli_json(home, "job", str(job_id))[0]
    [booting] = nodes().values()
    # When the operator cancels it
    r = sh.cli(home, "cancel", str(job_id))
    assert r.returncode == 0, r.stdout + r.stderr
    # Then the job ends cancelled, naming the server its compensation terminated
    assert sh.wait_until(lambda: cli_json(home, "job", str(job_id))[0]["result"] is not None, 60, 0.3)
    ended = cli_json(home, "job", str(job_id))[0]
    assert ended["status"] == "cancelled" and ended["error"] is None, ended
    [(node_id, node)] = nodes().items()
    assert ended["result"] == {"terminated": ended["result"]["terminated"], "node": node_id}
    # and the node is gone at the cloud, its agent dead, the server recorded terminated
    assert node["state"] == "terminated" and not process.is_alive(booting["pid"], booting["pid_start"])
    assert sh.stored_server(home, ended["result"]["terminated"])["state"] == "terminated"
