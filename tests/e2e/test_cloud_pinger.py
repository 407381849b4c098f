"""End to end on the embedded default: the pinger heartbeats the guests of the local cloud, and the
publisher runs the periodic server.sync.

The KM and the worker service are started by their init scripts in a scratch install root with
short intervals; a cloud credential is put into the KM and a server launched through the CLI, as
an operator would. Then the guest agent process is killed, and what the test looks at is what an
operator would see: the server object goes unreachable within the configured beats, a
server.sync of its account is submitted (once) and run, ``pinger check`` reports the guest down,
and the pinger's log says what happened."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from enstratus_workers.cloud import process
from enstratus_workers.cloud.local_state import LocalCloudState
from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ACCOUNT = "acct-ping"
STATE_DIR = "services/worker/data/local-cloud-acct-ping"
LAUNCH = {"account": ACCOUNT, "image": "local-agent", "size": "small", "name": "pinged"}
GUEST_INTERVAL, MISSES = 1, 2
GUEST_PROPS = {"pinger.guest_interval": GUEST_INTERVAL, "pinger.guest_misses": MISSES,
               "pinger.guest_timeout": 0.5}


def start(home) -> None:
    r = sh.km_init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    r = sh.init(home, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    with sh.km_client(home) as km:
        km.put(ACCOUNT, "cloud", "local-secret-" + secrets.token_urlsafe(16),
               metadata={"provider": "local", "key": "acct-ping-key", "state_dir": STATE_DIR})


def running_home(tmp_path, props: dict):
    """A scratch home with its own KM, both services started; everything stopped afterwards,
    also when starting fails half-way."""
    home = sh.make_home(tmp_path, worker_props=props)
    sh.add_km(home)
    admin = home / "services" / "worker" / "classes" / "admin.cfg"
    if admin.exists():  # any free port: concurrent test runs must not share the admin daemon's
        sh.set_keys(admin, {"port": 0})
    try:
        start(home)
        yield home
    finally:
        sh.init(home, "stop")
        sh.km_init(home, "stop")
        sh.kill_strays(home)  # the agents of servers a failed test did not terminate, and any stray


@pytest.fixture
def pinged_home(tmp_path):
    """Guest beats every second, unreachable after two misses; the periodic sync turned off, so
    the only server.sync is the one the pinger submits."""
    yield from running_home(tmp_path, {**GUEST_PROPS, "schedule.server.sync.interval": 0})


@pytest.fixture
def scheduled_home(tmp_path):
    """server.sync of every account every second."""
    yield from running_home(tmp_path, {"schedule.server.sync.interval": 1})


submit = sh.submit_wait
stored_server = sh.stored_server


def jobs(home, action) -> list[dict]:
    r = sh.cli(home, "jobs", "--json", "--limit", "500")
    assert r.returncode == 0, r.stdout + r.stderr
    return [j for j in json.loads(r.stdout) if j["action"] == action]


def pinger_check(home) -> subprocess.CompletedProcess:
    return subprocess.run([str(sh.REPO / "services" / "worker" / "bin" / "pinger"), "check"],
                          env=sh.env_for(home), capture_output=True, text=True, timeout=60)


def logs(home, daemon: str) -> str:
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted((home / "services" / "worker" / "log").glob(f"{daemon}@*.log")))


def test_a_killed_guest_is_marked_unreachable_synced_and_reported(pinged_home):
    home = pinged_home
    # Given a server launched through the CLI, whose guest the pinger has seen up
    launched = submit(home, "server.launch", LAUNCH)
    assert launched["status"] == "succeeded", launched["error"]
    server_id = launched["result"]["server_id"]
    seen = sh.wait_until(lambda: stored_server(home, server_id).get("guest_health") == "up", 20)
    assert seen, (stored_server(home, server_id), logs(home, "pinger")[-3000:])
    up = stored_server(home, server_id)
    assert up["state"] == "running" and up["last_seen_ms"] > launched["start_timestamp"]

    # When the guest agent process is killed
    node = LocalCloudState(home / STATE_DIR).read()["nodes"][up["provider_node_id"]]
    os.kill(node["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    assert sh.wait_until(lambda: not process.is_alive(node["pid"], node["pid_start"]), 10)

    # Then within the configured beats (plus a round's slack) the pinger marks it unreachable ...
    def marked():
        data = stored_server(home, server_id)
        return data.get("guest_health") == "unreachable" and data
    data = sh.wait_until(marked, (MISSES + 3) * GUEST_INTERVAL + 10, interval=0.2)
    assert data, (stored_server(home, server_id), logs(home, "pinger")[-3000:])
    assert time.monotonic() - killed_at < (MISSES + 3) * GUEST_INTERVAL + 10
    assert data["guest_error"] == "connection refused"

    # ... and a server.sync of its account appears, keyed by this outage, and runs
    def sync_done():
        found = [j for j in jobs(home, "server.sync") if j["status"] in ("succeeded", "failed", "dead")]
        return found
    synced = sh.wait_until(sync_done, 30, interval=0.3)
    assert synced, (jobs(home, "server.sync"), logs(home, "pinger")[-3000:])
    assert len(jobs(home, "server.sync")) == 1
    sync = synced[0]
    assert sync["arguments"] == {"account": ACCOUNT} and sync["status"] == "succeeded", sync
    assert sync["idempotency_key"] == f"guest:{server_id}:unreachable:{data['last_seen_ms']}"
    # the sync found the node stopped at the cloud: the object says so, and keeps the guest's health
    after = stored_server(home, server_id)
    assert (after["state"], after["guest_health"]) == ("stopped", "unreachable")

    # And pinger check reports the guest down (a warning: the service itself is fine)
    check = sh.wait_until(lambda: (c := pinger_check(home)).returncode == 1 and c, 15)
    assert check, pinger_check(home).stdout
    assert check.stdout.startswith("ENSTRATUS-WORKERS WARNING") and "1 guest down" in check.stdout
    assert f"{server_id} (stopped" in check.stdout

    # And the pinger's log tells the story
    pinger_log = logs(home, "pinger")
    assert f"guest of server {server_id}: up -> unreachable (connection refused)" in pinger_log
    assert f"server.sync of account {ACCOUNT}: job {sync['job_id']}" in pinger_log

    # And still one sync after more rounds (the server is no longer watched: it is stopped)
    time.sleep(3 * GUEST_INTERVAL)
    assert len(jobs(home, "server.sync")) == 1

    # When the operator terminates the server, the check is clean of it again
    assert submit(home, "server.terminate", {"server_id": server_id})["status"] == "succeeded"
    check = sh.wait_until(lambda: (c := pinger_check(home)).returncode == 0 and c, 20)
    assert check, pinger_check(home).stdout


def test_the_publisher_syncs_every_account_once_per_interval(scheduled_home):
    home = scheduled_home
    # Given a server of the account, launched through the CLI
    launched = submit(home, "server.launch", LAUNCH)
    assert launched["status"] == "succeeded", launched["error"]
    server_id = launched["result"]["server_id"]

    # Then the publisher submits server.sync of the account, one job per 1 s slot, and they run
    prefix = f"sched:server.sync:{ACCOUNT}:"

    def scheduled():
        found = [j for j in jobs(home, "server.sync") if j["idempotency_key"].startswith(prefix)]
        return len([j for j in found if j["status"] == "succeeded"]) >= 3 and found
    found = sh.wait_until(scheduled, 40, interval=0.5)
    assert found, (jobs(home, "server.sync"), logs(home, "publisher")[-3000:])
    slots = [int(j["idempotency_key"].rsplit(":", 1)[1]) for j in found]
    assert len(slots) == len(set(slots))
    assert all(j["arguments"] == {"account": ACCOUNT} for j in found)
    # the syncs keep the server object current: it is running, as its node is
    assert stored_server(home, server_id)["state"] == "running"
    assert submit(home, "server.terminate", {"server_id": server_id})["status"] == "succeeded"
