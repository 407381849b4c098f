"""A libcloud compute driver for the "local" cloud: its machines are guest-agent processes.

So launching, rebooting, syncing, heartbeats and log collection all run end to end on one host
with nothing but Python: ``create_node`` starts a detached agent on a free loopback port,
``list_nodes`` reports RUNNING or STOPPED from whether that process lives, ``reboot_node``
restarts it on the same port, ``destroy_node`` kills it. The cloud's state (owner credentials,
nodes, firewall rules) lives in a directory given as ``ex_state_dir``, e.g.
``services/worker/data/local-cloud``; see ``local_state.py``. Given ``ex_rate_limit`` (requests
per second), it throttles as a provider does: beyond the limit a call raises libcloud's
``RateLimitReachedError`` with a ``Retry-After`` (``local_throttle.py``).

Use it as any libcloud driver once registered::

    register_local_driver()
    Driver = libcloud.compute.providers.get_driver("local")
    driver = Driver(key, secret, ex_state_dir=path)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
import shutil
from pathlib import Path

from libcloud.common.base import ConnectionUserAndKey
from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.types import NodeState

from enstratus_workers.cloud import local_agents, process
from enstratus_workers.cloud.local_state import LocalCloudState, now_ms
from enstratus_workers.cloud.local_throttle import LocalThrottle

log = logging.getLogger(__name__)

PROVIDER = "local"
HOST = "127.0.0.1"
#: how long a destroyed node stays listed as TERMINATED (real clouds show them for a while too)
TOMBSTONE_TTL_MS = 3600 * 1000

#: image id -> (name, seconds between the agent's "alive" log lines)
IMAGES = {
    "local-agent": ("Guest agent", 30.0),
    "local-agent-chatty": ("Guest agent, alive line every second", 1.0),
    "local-agent-slow-boot": ("Guest agent that boots for BOOT_S seconds (PENDING meanwhile)", 30.0),
}
#: image id -> seconds a new node of it reads PENDING, as a real cloud's node does while it boots
#: (what a launch cancelled "while building" is cancelled in)
BOOT_S = {"local-agent-slow-boot": 30.0}
#: size id -> (name, ram MiB, disk GiB)
SIZES = {
    "small": ("Small", 512, 10),
    "medium": ("Medium", 2048, 40),
    "large": ("Large", 8192, 160),
}


class LocalConnection(ConnectionUserAndKey):
    """libcloud wants a connection object; the local cloud has no endpoint to connect to."""

    def connect(self, host=None, port=None):
        pass


class LocalNodeDriver(NodeDriver):
    """Nodes are guest agents on 127.0.0.1, state in ``ex_state_dir``; see the module docstring."""

    connectionCls = LocalConnection
    type = PROVIDER
    name = "Local guest-agent cloud"
    website = "https://github.com/enstratus/enstratus-workers"
    features = {"create_node": []}

    def __init__(self, key, secret=None, secure=False, host=None, port=None, api_version=None,
                 region=None, ex_state_dir=None, ex_rate_limit=None, ex_rate_burst=None, **kwargs):
        if ex_state_dir is None:
            raise ValueError("the local driver needs ex_state_dir: the directory of the cloud's state")
        self._throttle = (LocalThrottle(Path(ex_state_dir), ex_rate_limit, ex_rate_burst)
                          if ex_rate_limit is not None else None)
        self._state = LocalCloudState(Path(ex_state_dir))
        self._state.authenticate(key, secret)
        super().__init__(key, secret, secure=False, host=host, port=port, api_version=api_version,
                         region=region, **kwargs)

    # -- catalogue ---------------------------------------------------------------------------------

    def list_images(self, location=None):
        self._admit("list_images")
        return [NodeImage(i, name, self, extra={"alive_interval": alive})
                for i, (name, alive) in IMAGES.items()]

    def list_sizes(self, location=None):
        self._admit("list_sizes")
        return [NodeSize(i, name, ram, disk, None, 0.0, self) for i, (name, ram, disk) in SIZES.items()]

    def list_locations(self):
        self._admit("list_locations")
        return [NodeLocation("loopback", "This host's loopback", "local", self)]

    # -- nodes -------------------------------------------------------------------------------------

    def list_nodes(self, ex_node_ids=None):
        self._admit("list_nodes")
        state = self._state.read()
        if self._expired(state):
            with self._state.transaction() as state:
                for node_id in self._expired(state):
                    del state["nodes"][node_id]
        records = list(state["nodes"].values())
        wanted = set(ex_node_ids) if ex_node_ids is not None else None
        return [self._to_node(r) for r in records if wanted is None or r["id"] in wanted]

    def create_node(self, name, size, image, location=None, auth=None, ex_tags=None):
        """Start an agent on a free port. ``ex_tags`` (str -> str) are kept and shown in ``extra``."""
        self._admit("create_node")
        image_id, size_id = _id_of(image), _id_of(size)
        if image_id not in IMAGES:
            raise LibcloudError(f"unknown image {image_id!r} (images: {', '.join(IMAGES)})", driver=self)
        if size_id not in SIZES:
            raise LibcloudError(f"unknown size {size_id!r} (sizes: {', '.join(SIZES)})", driver=self)
        tags = {str(k): str(v) for k, v in (ex_tags or {}).items()}
        node_id = "ln-" + secrets.token_hex(6)
        node_dir = self._state.node_dir(node_id)
        node_dir.mkdir(parents=True, mode=0o700)
        log_path = node_dir / "agent.log"
        try:
            launched = local_agents.launch(node_id, 0, log_path, IMAGES[image_id][1], HOST)
        except BaseException:
            shutil.rmtree(node_dir, ignore_errors=True)
            raise
        record = {"id": node_id, "name": str(name), "image": image_id, "size": size_id,
                  "port": launched.port, "pid": launched.pid, "pid_start": launched.pid_start,
                  "state": "running", "created_ms": now_ms(), "tags": tags, "ingress": [],
                  "log": str(log_path)}
        try:
            with self._state.transaction() as state:
                state["nodes"][node_id] = record
        except BaseException:  # not recorded: do not leave an untracked machine running
            process.terminate(launched.pid, launched.pid_start)
            raise
        log.info("local cloud: created %s (%s) on port %d", node_id, name, launched.port)
        return self._to_node(record)

    def reboot_node(self, node):
        """Stop the agent and start it again on the same port; also revives a stopped node."""
        self._admit("reboot_node")
        with self._state.transaction() as state:
            record = self._record(state, node)
            process.terminate(record["pid"], record["pid_start"])
            image_alive = IMAGES.get(record["image"], ("", 30.0))[1]
            launched = local_agents.launch(record["id"], record["port"], Path(record["log"]),
                                           image_alive, HOST)
            record.update(pid=launched.pid, pid_start=launched.pid_start)
        log.info("local cloud: rebooted %s on port %d", record["id"], record["port"])
        return True

    def destroy_node(self, node):
        """Kill the agent and delete its disk (log); the node stays listed as TERMINATED a while."""
        self._admit("destroy_node")
        with self._state.transaction() as state:
            record = self._record(state, node, allow_terminated=True)
            if record["state"] == "terminated":
                return True
            if not process.terminate(record["pid"], record["pid_start"]):
                raise LibcloudError(f"node {record['id']}: agent pid {record['pid']} would not die",
                                    driver=self)
            shutil.rmtree(self._state.node_dir(record["id"]), ignore_errors=True)
            record.update(state="terminated", terminated_ms=now_ms(), pid=None, pid_start=None)
        log.info("local cloud: destroyed %s", record["id"])
        return True

    # -- firewall ----------------------------------------------------------------------------------

    def ex_authorize_ingress(self, node, port, cidrs, protocol="tcp"):
        """Allow ``protocol``/``port`` from ``cidrs``; returns the node's rules. Idempotent.

        The rule is recorded, not enforced: loopback has no firewall to program.
        """
        self._admit("ex_authorize_ingress")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        nets = sorted({str(ipaddress.ip_network(str(c), strict=False)) for c in cidrs})
        if not nets:
            raise ValueError("at least one CIDR is needed")
        with self._state.transaction() as state:
            record = self._record(state, node)
            rule = {"protocol": protocol, "port": port, "cidrs": nets}
            if rule not in record["ingress"]:
                record["ingress"].append(rule)
            return [dict(r) for r in record["ingress"]]

    def ex_list_ingress_rules(self, node):
        self._admit("ex_list_ingress_rules")
        state = self._state.read()
        return [dict(r) for r in self._record(state, node, allow_terminated=True)["ingress"]]

    # -- helpers -----------------------------------------------------------------------------------

    def _admit(self, call: str) -> None:
        """Every API call passes the cloud's own request limit first, when it has one."""
        if self._throttle is not None:
            self._throttle.admit(call)

    def _record(self, state: dict, node, allow_terminated: bool = False) -> dict:
        node_id = node.id if isinstance(node, Node) else str(node)
        record = state["nodes"].get(node_id)
        if record is None or (record["state"] == "terminated" and not allow_terminated):
            raise LibcloudError(f"no such node {node_id!r}", driver=self)
        return record

    @staticmethod
    def _expired(state: dict) -> list[str]:
        """Ids of destroyed nodes past their time on the list."""
        cutoff = now_ms() - TOMBSTONE_TTL_MS
        return [i for i, r in state["nodes"].items()
                if r["state"] == "terminated" and r.get("terminated_ms", 0) < cutoff]

    def _to_node(self, r: dict) -> Node:
        if r["state"] == "terminated":
            state = NodeState.TERMINATED
        elif now_ms() < r["created_ms"] + BOOT_S.get(r["image"], 0) * 1000:
            state = NodeState.PENDING
        else:
            state = NodeState.RUNNING if process.is_alive(r["pid"], r["pid_start"]) else NodeState.STOPPED
        image = NodeImage(r["image"], IMAGES.get(r["image"], (r["image"],))[0], self)
        size_name, ram, disk = SIZES.get(r["size"], (r["size"], 0, 0))
        size = NodeSize(r["size"], size_name, ram, disk, None, 0.0, self)
        created = dt.datetime.fromtimestamp(r["created_ms"] / 1000, tz=dt.timezone.utc)
        ips = [] if state == NodeState.TERMINATED else [HOST]
        extra = {"agent_port": r["port"], "pid": r["pid"], "tags": dict(r["tags"]),
                 "ingress": [dict(x) for x in r["ingress"]], "created_ms": r["created_ms"]}
        return Node(r["id"], r["name"], state, ips, list(ips), self, size=size, image=image,
                    created_at=created, extra=extra)


def _id_of(thing) -> str:
    return str(getattr(thing, "id", thing))


def register_local_driver() -> None:
    """Make ``get_driver("local")`` return ``LocalNodeDriver``. Idempotent; call it at start-up."""
    from libcloud.compute.providers import DRIVERS, set_driver

    if PROVIDER not in DRIVERS:
        set_driver(PROVIDER, __name__, LocalNodeDriver.__name__)
