"""``server.launch`` cancelled while its node boots: it stops, and its compensation terminates the
server it was building, on the local cloud (a node of the ``local-agent-slow-boot`` image reads
PENDING for a while, as a real cloud's does while it boots)."""

from __future__ import annotations

import json

from enstratus_workers.actions.executor import execute
from enstratus_workers.actions.registry import Registry
from enstratus_workers.cloud import process
from enstratus_workers.cloud.actions import register_cloud_actions, undo_launch
from enstratus_workers.jobs.values import Task
from tests.unit.test_cloud_actions import LAUNCH, cloud, home, km, make_context, store  # noqa: F401 (fixtures)

SLOW = dict(LAUNCH, image="local-agent-slow-boot")


def _launch(job_id, arguments=SLOW, compensate=False) -> Task:
    return Task(job_id, "server.launch", dict(arguments), 1, 3, "default", compensate=compensate)


def test_a_launch_cancelled_while_its_node_boots_terminates_that_node(make_context, store, cloud):
    registry = Registry()
    register_cloud_actions(registry)
    ctx = make_context(job_id=41)
    services = {"settings": ctx.settings, "km": ctx.km, "persistence": ctx.persistence}
    # Given a launch whose node was created and is booting / When the job is cancelled then
    outcome = execute(registry, _launch(41), "w@h.1", services, cancelled=lambda: bool(cloud().list_nodes()))
    # Then the attempt ends cancelled, and its result names the server and node it terminated
    [node] = cloud().list_nodes()
    result = json.loads(outcome.result)
    assert outcome.status == "cancelled" and outcome.error is None
    assert result == {"terminated": result["terminated"], "node": node.id}
    assert str(node.state) == "terminated" and not process.is_alive(node.extra["pid"], None)
    assert store.get("server", result["terminated"]).data["state"] == "terminated"


def test_the_compensation_alone_finds_the_node_of_a_killed_attempt_and_nothing_if_none(make_context, cloud):
    registry = Registry()
    register_cloud_actions(registry)
    ctx = make_context(job_id=42)
    services = {"settings": ctx.settings, "km": ctx.km, "persistence": ctx.persistence}
    # Given a launch that created its node, then its worker was killed for the cancel
    execute(registry, _launch(42, LAUNCH), "w@h.1", services)
    assert [str(n.state) for n in cloud().list_nodes()] == ["running"]
    # When its compensation runs on another worker (Task.compensate)
    outcome = execute(registry, _launch(42, LAUNCH, compensate=True), "w@h.2", services)
    # Then the node is found by the launch's intent and terminated
    assert outcome.status == "cancelled" and json.loads(outcome.result)["node"] == cloud().list_nodes()[0].id
    assert [str(n.state) for n in cloud().list_nodes()] == ["terminated"]
    # and a job that never got as far as launching has nothing to undo
    assert undo_launch(dict(SLOW), make_context(job_id=43)) == {"terminated": None, "reason": "no server was launched"}
