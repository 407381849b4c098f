"""The "local" libcloud driver: nodes are real guest-agent processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal

import pytest
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from enstratus_workers.cloud import local_driver, process
from enstratus_workers.cloud.local_driver import LocalNodeDriver, register_local_driver
from enstratus_workers.guest import client
from tests.servicehome import wait_until

HOST = "127.0.0.1"


def kill_every_agent(state_dir) -> None:
    """Test cleanup: whatever a test left running in the local cloud, stop it."""
    try:
        state = json.loads((state_dir / "cloud.json").read_text())
    except FileNotFoundError:
        return
    for record in state["nodes"].values():
        if record.get("pid"):
            process.terminate(record["pid"], record.get("pid_start"), grace=2.0)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "local-cloud"
    yield path
    kill_every_agent(path)


@pytest.fixture
def driver(state_dir):
    return LocalNodeDriver("acct-key", "s3cret", ex_state_dir=state_dir)


def _size(driver, size_id="small"):
    return next(s for s in driver.list_sizes() if s.id == size_id)


def _image(driver, image_id="local-agent"):
    return next(i for i in driver.list_images() if i.id == image_id)


def test_the_driver_is_registered_with_libcloud_under_local():
    register_local_driver()
    register_local_driver()  # idempotent

    assert get_driver("local") is LocalNodeDriver


def test_create_starts_an_agent_that_outlives_us_and_is_listed_running(driver, state_dir):
    node = driver.create_node("web-1", _size(driver), _image(driver), ex_tags={"team": "ops"})

    assert node.state == NodeState.RUNNING and node.public_ips == [HOST]
    port, pid = node.extra["agent_port"], node.extra["pid"]
    assert client.ping(HOST, port).server_id == node.id  # the guest knows itself by its node id
    # detached: its own session, and not our child (it survives the worker that launched it)
    assert os.getsid(pid) != os.getsid(0)
    assert _parent_of(pid) != os.getpid()

    [listed] = driver.list_nodes()
    assert (listed.id, listed.name, listed.state) == (node.id, "web-1", NodeState.RUNNING)
    assert listed.extra["tags"] == {"team": "ops"}
    assert listed.size.id == "small" and listed.image.id == "local-agent"
    assert "boot: ready" in (state_dir / "nodes" / node.id / "agent.log").read_text()


def test_reboot_restarts_the_agent_on_the_same_port(driver):
    node = driver.create_node("web-2", _size(driver), _image(driver))
    old_pid = node.extra["pid"]

    assert driver.reboot_node(node) is True

    [after] = driver.list_nodes()
    assert after.state == NodeState.RUNNING
    assert after.extra["agent_port"] == node.extra["agent_port"]
    assert after.extra["pid"] != old_pid and not process.is_alive(old_pid, None)
    assert client.ping(HOST, after.extra["agent_port"]).uptime_s < 5


def test_a_killed_agent_is_listed_stopped_and_reboot_revives_it(driver):
    node = driver.create_node("web-3", _size(driver), _image(driver))

    os.kill(node.extra["pid"], signal.SIGKILL)
    assert wait_until(lambda: driver.list_nodes()[0].state == NodeState.STOPPED)

    driver.reboot_node(node)
    assert driver.list_nodes()[0].state == NodeState.RUNNING
    assert client.ping(HOST, node.extra["agent_port"]).server_id == node.id


def test_destroy_kills_the_agent_and_leaves_a_terminated_node(driver, state_dir):
    node = driver.create_node("web-4", _size(driver), _image(driver))
    port, pid = node.extra["agent_port"], node.extra["pid"]

    assert driver.destroy_node(node) is True

    [gone] = driver.list_nodes()
    assert gone.state == NodeState.TERMINATED and gone.public_ips == []
    assert not process.is_alive(pid, None)
    assert not (state_dir / "nodes" / node.id).exists()
    with pytest.raises(ConnectionRefusedError):
        client.ping(HOST, port, timeout=2)
    assert driver.destroy_node(node) is True  # destroying twice is fine
    with pytest.raises(LibcloudError):
        driver.reboot_node(node)


def test_a_destroyed_node_drops_off_the_list_once_its_time_is_up(driver, monkeypatch):
    node = driver.create_node("web-6", _size(driver), _image(driver))
    driver.destroy_node(node)
    assert [n.state for n in driver.list_nodes()] == [NodeState.TERMINATED]

    monkeypatch.setattr(local_driver, "TOMBSTONE_TTL_MS", -1)

    assert driver.list_nodes() == []
    assert json.loads((driver._state.root / "cloud.json").read_text())["nodes"] == {}


def test_ingress_rules_are_recorded_normalised_and_once(driver):
    node = driver.create_node("web-5", _size(driver), _image(driver))
    port = node.extra["agent_port"]

    driver.ex_authorize_ingress(node, port, ["10.1.2.3/16", "192.0.2.0/24"])
    rules = driver.ex_authorize_ingress(node, port, ["192.0.2.0/24", "10.1.0.0/16"])

    assert rules == [{"protocol": "tcp", "port": port, "cidrs": ["10.1.0.0/16", "192.0.2.0/24"]}]
    assert driver.list_nodes()[0].extra["ingress"] == rules
    with pytest.raises(ValueError):
        driver.ex_authorize_ingress(node, port, ["not-a-cidr"])


def test_another_secret_or_key_is_refused(driver, state_dir):
    with pytest.raises(InvalidCredsError):
        LocalNodeDriver("acct-key", "guess", ex_state_dir=state_dir)
    with pytest.raises(InvalidCredsError):
        LocalNodeDriver("other-key", "s3cret", ex_state_dir=state_dir)
    with pytest.raises(InvalidCredsError):
        LocalNodeDriver("acct-key", None, ex_state_dir=state_dir)
    assert LocalNodeDriver("acct-key", "s3cret", ex_state_dir=state_dir).list_nodes() == []
    assert "s3cret" not in (state_dir / "cloud.json").read_text()


def test_unknown_image_or_size_is_an_error_and_starts_nothing(driver, state_dir):
    with pytest.raises(LibcloudError, match="unknown image 'windows'"):
        driver.create_node("x", _size(driver), "windows")
    with pytest.raises(LibcloudError, match="unknown size 'huge'"):
        driver.create_node("x", "huge", _image(driver))

    assert driver.list_nodes() == []
    assert not (state_dir / "nodes").exists() or not any((state_dir / "nodes").iterdir())


def test_a_state_dir_is_required():
    with pytest.raises(ValueError, match="ex_state_dir"):
        LocalNodeDriver("k", "s")


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

