"""End to end on the embedded default: the KM and the worker service started by their init scripts
in a scratch install root, a cloud credential put into the KM, servers launched and terminated on
the local cloud through the CLI. What the tests look at is what an operator would: the job's
outcome, the server object in the persistence layer, the guest agent on its port, the firewall
rule, and that the credential's secret went nowhere near a job row."""

from __future__ import annotations

import json
import secrets

import pytest

from enstratus_workers.cloud import process
from enstratus_workers.cloud.local_state import LocalCloudState
from enstratus_workers.config import load_settings
from enstratus_workers.guest import client as guest
from enstratus_workers.layout import Layout
from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACCOUNT = "acct-1"
STATE_DIR = "services/worker/data/local-cloud-acct-1"   # relative: under the install root
SOURCE_CIDRS = ["127.0.0.1/32", "10.11.0.0/16"]
LAUNCH = {"account": ACCOUNT, "image": "local-agent", "size": "small", "name": "web"}


@pytest.fixture
def home(tmp_path):
    """A scratch install with its own KM on a free port, both services started; stopped after."""
    home = sh.make_home(tmp_path)
    sh.any_admin_port(home)
    sh.add_km(home)
    sh.set_keys(home / "services/worker/classes/enstratus-provisioning.cfg",
                {"SOURCE_CIDR": ", ".join(SOURCE_CIDRS)})
    try:
        r = sh.km_init(home, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        r = sh.init(home, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        yield home
    finally:
        sh.init(home, "stop")
        sh.km_init(home, "stop")
        sh.kill_strays(home)  # agents of servers a failed test did not terminate, and any stray


@pytest.fixture
def cloud_secret(home):
    """The secret of acct-1's cloud credential, put into the KM as an operator's tooling would."""
    secret = "local-secret-" + secrets.token_urlsafe(24)
    with sh.km_client(home) as km:
        km.put(ACCOUNT, "cloud", secret, metadata={"provider": "local", "key": "acct-1-key",
                                                   "state_dir": STATE_DIR})
    return secret


submit = sh.submit_wait
stored_server = sh.stored_server


def test_a_server_is_launched_with_the_kms_credential_answers_and_is_terminated(home, cloud_secret):
    # When the user launches a server for an account whose cloud credential is in the KM
    job = submit(home, "server.launch", LAUNCH)

    # Then the job succeeded and says which server it made
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["account"], result["provider"], result["name"], result["state"]) == \
        (ACCOUNT, "local", "web", "running")
    server_id, port = result["server_id"], result["agent_port"]

    # And the server object in the persistence layer is running, on the agent's address
    server = stored_server(home, server_id)
    assert server["state"] == "running" and server["launched_by_job"] == job["job_id"]
    assert (server["public_ip"], server["agent_port"]) == ("127.0.0.1", port)

    # And its guest agent answers a ping as the node the cloud says it is
    pong = guest.ping(server["public_ip"], server["agent_port"], timeout=5)
    assert pong.server_id == server["provider_node_id"]

    # And the firewall rule recorded for it opens the agent port to SOURCE_CIDR, and only that,
    # both in the server object and at the (local) cloud
    expected_rule = {"protocol": "tcp", "port": port, "cidrs": SOURCE_CIDRS}
    assert [dict(r, cidrs=sorted(r["cidrs"])) for r in server["firewall"]] == \
        [dict(expected_rule, cidrs=sorted(SOURCE_CIDRS))]
    cloud = LocalCloudState(home / STATE_DIR).read()
    node = cloud["nodes"][server["provider_node_id"]]
    assert node["ingress"] == [dict(expected_rule, cidrs=sorted(SOURCE_CIDRS))]
    assert process.is_alive(node["pid"], node["pid_start"])

    # And the credential's secret is nowhere in the job, nor in the cloud's state file
    shown = sh.cli(home, "job", str(job["job_id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    assert cloud_secret not in shown.stdout and cloud_secret not in json.dumps(job)
    assert cloud_secret not in (home / STATE_DIR / "cloud.json").read_text()

    # When the server is terminated
    done = submit(home, "server.terminate", {"server_id": server_id})

    # Then the job succeeded, the server object says terminated, and the agent process is gone
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["state"] == "terminated"
    assert stored_server(home, server_id)["state"] == "terminated"
    assert sh.wait_until(lambda: not process.is_alive(node["pid"], node["pid_start"]), 10)
    with pytest.raises(OSError):
        guest.ping("127.0.0.1", port, timeout=2)
    assert cloud_secret not in json.dumps(done)
    # And every state change of the server is an analytics event, with the job that made it
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    dbs = open_databases(load_settings(Layout(home)).worker, Layout(home))
    try:
        changes = [(e.old_state, e.new_state, e.action) for e in dbs.events.server_events(server_id)]
    finally:
        dbs.close()
    assert changes[0][1] == "launching" and changes[-1] == ("running", "terminated", "server.terminate")
    assert ("launching", "running", "server.launch") in changes


def test_a_launch_for_an_account_without_a_credential_fails_clearly(home, cloud_secret):
    # When a server is launched for an account the KM holds nothing for
    job = submit(home, "server.launch", dict(LAUNCH, account="acct-none"))

    # Then the job failed on its first attempt, saying what is missing, and launched nothing
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"] == "account acct-none has no cloud credentials (KM credential 'cloud')"
    assert job["result"] is None
    assert not (home / STATE_DIR).exists()
    assert not [p for p in sh.our_processes(home) if "guest.agent" in _cmdline(p)]


def test_a_stopped_km_fails_the_launch_clearly_and_the_service_goes_on(home, cloud_secret):
    # Given the KM stopped under a running worker service
    r = sh.km_init(home, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh.km_init(home, "status").returncode == 3

    # When a server is launched (the outage is worth a retry: two attempts here)
    job = submit(home, "server.launch", LAUNCH, "--max-attempts", "2")

    # Then the job ends after its attempts with an error that says the KM is unavailable
    assert job["status"] == "dead" and job["attempts"] == 2, job
    port = load_settings(Layout(home)).km_client.port
    assert job["error"].startswith(f"KMUnavailable: KM at 127.0.0.1:{port} unavailable after")
    assert "Connection refused" in job["error"]
    assert not (home / STATE_DIR).exists()

    # And the worker service did not crash: it is still running and the next job succeeds
    assert sh.init(home, "status").returncode == 0
    echo = submit(home, "echo", {"after": "km outage"})
    assert echo["status"] == "succeeded" and echo["result"] == {"after": "km outage"}

    # And once the KM is back, the same launch succeeds
    assert sh.km_init(home, "start").returncode == 0
    again = submit(home, "server.launch", LAUNCH)
    assert again["status"] == "succeeded", again["error"]
    assert submit(home, "server.terminate", {"server_id": again["result"]["server_id"]})["status"] == "succeeded"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_no_process_is_left_once_both_services_are_stopped(tmp_path):
    # Given both services started and a server launched
    home = sh.make_home(tmp_path)
    sh.any_admin_port(home)
    sh.add_km(home)
    try:
        assert sh.km_init(home, "start").returncode == 0
        assert sh.init(home, "start").returncode == 0
        with sh.km_client(home) as km:
            km.put(ACCOUNT, "cloud", secrets.token_hex(16), metadata={"provider": "local", "key": "k"})
        launched = submit(home, "server.launch", LAUNCH)
        assert launched["status"] == "succeeded", launched["error"]
        submit(home, "server.terminate", {"server_id": launched["result"]["server_id"]})

        # When both are stopped with their init scripts
        assert sh.init(home, "stop").returncode == 0
        assert sh.km_init(home, "stop").returncode == 0

        # Then no process of the install is left, and no pid file
        assert sh.our_processes(home) == []
        assert list(home.glob("services/*/run/*.pid")) == []
        assert sh.init(home, "status").returncode == 3 and sh.km_init(home, "status").returncode == 3
    finally:
        sh.init(home, "stop")
        sh.km_init(home, "stop")
        sh.kill_strays(home)
