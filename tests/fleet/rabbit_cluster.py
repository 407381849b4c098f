"""A RabbitMQ cluster of a test's own: N nodes beside the machine's node, under one temporary folder.

Every node is a ``/usr/lib/rabbitmq/bin/rabbitmq-server -detached`` with its own node name,
AMQP port, distribution port, data and log folders, config file and (empty) plug-in list; they
share an Erlang cookie in a ``HOME`` of their own and an ``epmd`` of their own on a free port, so
nothing of the machine's node (``rabbit@localhost`` on 5672, the machine's epmd on 4369) is
touched, read or stopped. The machine's ``/etc/rabbitmq/rabbitmq-env.conf`` is kept out too
(``RABBITMQ_CONF_ENV_FILE`` points at an empty file of ours).

Start-up: the nodes boot in parallel (17.4 s for three here against 22.7 s one after another,
on the loaded two-core machine), then nodes 2..N join node 1 one at a time, as RabbitMQ's
clustering guide does it (``stop_app`` / ``join_cluster`` / ``start_app``); see ``started_in``. Each node runs under ``reaper.py``, which stays the parent of the detached
``beam.smp`` and reaps it (no zombie is left for a PID 1 that does not reap), and takes the node
down if the test process dies. Tear-down kills by pid what this harness started (each node's
beam.smp from its pid file, the epmd it ran), waits for the reapers, and removes the folder,
whatever state the test left the nodes in.

    with RabbitCluster.start(size=3) as cluster:       # or start() ... close(), as GaleraCluster
        mq_cfg["host"] = cluster.amqp_hosts()
        cluster.stop_node(cluster.busiest_node())
        ...
        cluster.heal()                                  # every node running again

``tests/fleet/conftest.py`` makes one a session fixture (``rabbit_cluster``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.fleet.ports import free_ports

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"
REAPER = Path(__file__).with_name("reaper.py")
BOOT_TIMEOUT_S = 90      # a node's boot on a loaded two-core machine takes 5-15 s
STOP_TIMEOUT_S = 60


def available() -> str | None:
    """Why a cluster cannot be started here (``None`` if it can)."""
    for tool in (SERVER, CTL):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found (install the rabbitmq-server package)"
    if shutil.which("epmd") is None:
        return "epmd not found on PATH (it comes with erlang-base)"
    return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes (its reaper collects it a moment later)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class RabbitNode:
    """One node of the cluster: where it listens and keeps its files; ``pid`` while it runs."""

    index: int
    name: str          # the Erlang node name, e.g. ewq3f9a1-2@localhost
    port: int          # AMQP
    dist_port: int     # Erlang distribution
    folder: Path
    pid: int | None = None
    keeper: subprocess.Popen | None = None   # reaper.py, the parent of the detached beam.smp

    @property
    def pid_file(self) -> Path:
        return self.folder / "rabbit.pid"

    @property
    def amqp(self) -> str:
        return f"127.0.0.1:{self.port}"


class RabbitCluster:
    """N RabbitMQ nodes clustered together; see the module docstring."""

    def __init__(self, root: Path, size: int = 3):
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.root = root
        self.home = root / "home"
        tag = "ewq" + uuid.uuid4().hex[:6]
        # every port below the ephemeral range (ports.py), so a node started again finds its own
        # free: distribution ports in 10000-14999, the CLI tools' at theirs + 10000 (20000-24999),
        # AMQP and epmd between the two
        taken: set[int] = set()
        dist = free_ports(size, 10000, 15000, taken)
        amqp = free_ports(size, 15000, 20000, taken)
        [self.epmd_port] = free_ports(1, 15000, 20000, taken)
        self.nodes = [RabbitNode(i, f"{tag}-{i + 1}@localhost", amqp[i], dist[i], root / f"node{i + 1}")
                      for i in range(size)]
        self._epmd: subprocess.Popen | None = None
        self.started_in: float | None = None   # seconds start() took: boots plus joins

    # -- life cycle ------------------------------------------------------------------------------

    @classmethod
    def start(cls, parent: Path | None = None, size: int = 3) -> "RabbitCluster":
        """A running cluster of ``size`` joined nodes in a new folder under ``parent`` (or the
        system's temp dir); everything is torn down if starting it fails half-way."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="ewrabbit-", dir=parent)), size)
        try:
            cluster._start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def __enter__(self) -> "RabbitCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        """Write the files, run epmd, boot every node in parallel, join them into one cluster."""
        began = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            (node.folder / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.port}\n"
                "loopback_users.guest = true\n"
                # a stopped node must not hold up the others' boots for minutes
                "mnesia_table_loading_retry_timeout = 5000\n"
                "mnesia_table_loading_retry_limit = 6\n"
                "log.console = false\n"
                "log.file.level = info\n")
        self._epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                      env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_epmd()
        self.start_nodes(range(len(self.nodes)))
        first = self.nodes[0].name
        for node in self.nodes[1:]:
            self.ctl(node.index, "stop_app")
            self.ctl(node.index, "join_cluster", first)
            self.ctl(node.index, "start_app")
        self.started_in = time.monotonic() - began

    def close(self) -> None:
        """Kill every node (SIGKILL, by the pid each wrote) and the epmd, wait for the reapers,
        and remove the folder. Whatever state the nodes are in; idempotent."""
        for node in self.nodes:
            self.kill_node(node.index)
        if self._epmd is not None:
            self._epmd.kill()
            self._epmd.wait(10)
            self._epmd = None
        shutil.rmtree(self.root, ignore_errors=True)

    # -- nodes -----------------------------------------------------------------------------------

    def start_node(self, index: int) -> None:
        """Boot node ``index`` again (it rejoins its cluster) and wait until it serves AMQP."""
        self.start_nodes([index])

    def start_nodes(self, indices) -> None:
        """Boot these nodes at once and wait for all of them (in parallel: each boot waits on the
        others when the cluster was stopped whole).

        The reapers are started from the calling thread: a reaper takes its node down when the
        thread that started it ends (``PR_SET_PDEATHSIG`` is per thread), so not from a pool's.
        """
        indices = [i for i in indices if not self.running(i)]
        for index in indices:
            self._launch(index)
        with ThreadPoolExecutor(max_workers=len(indices) or 1) as pool:
            for _ in pool.map(self._await_boot, indices):
                pass

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` the orderly way (``rabbitmqctl stop``) and wait for its process to end."""
        node = self.nodes[index]
        pid = node.pid or self._read_pid(node)
        if not _alive(pid):
            self._reaped(node)
            return
        self.ctl(index, "stop", check=False, timeout=STOP_TIMEOUT_S)
        if not self._wait_gone(pid, STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
        self._reaped(node)

    def kill_node(self, index: int) -> None:
        """kill -9 node ``index``: no goodbye to its clients or peers."""
        node = self.nodes[index]
        pid = node.pid or self._read_pid(node)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reaped(node)

    def running(self, index: int) -> bool:
        return _alive(self.nodes[index].pid)

    def heal(self) -> None:
        """Every node running again (after a test stopped or killed some): boots those that are
        down, all at once (a node restarting after the whole cluster went waits for its peers)."""
        down = [n.index for n in self.nodes if not self.running(n.index)]
        if down:
            self.start_nodes(down)

    def amqp_hosts(self, indices=None) -> str:
        """The nodes as ``mq.cfg``'s ``host`` list: ``127.0.0.1:p1,127.0.0.1:p2,...``."""
        chosen = range(len(self.nodes)) if indices is None else indices
        return ",".join(self.nodes[i].amqp for i in chosen)

    def connections(self, index: int) -> list[str]:
        """The names of the AMQP connections node ``index`` holds (clients name theirs; "" if not)."""
        out = self.ctl(index, "list_connections", "-q", "--formatter", "json", "client_properties").stdout
        names = []
        for connection in json.loads(out or "[]"):
            # client_properties: [[key, type, value], ...]; a connection still opening has none
            # yet (rabbitmqctl then prints a string in its place)
            props = connection.get("client_properties")
            named = [p[2] for p in props if isinstance(p, list) and len(p) == 3 and p[0] == "connection_name"] \
                if isinstance(props, list) else []
            names.append(str(named[0]) if named else "")
        return names

    def busiest_node(self) -> int:
        """The index of the running node that holds the most AMQP connections."""
        counts = {n.index: len(self.connections(n.index)) for n in self.nodes if self.running(n.index)}
        return max(counts, key=lambda i: (counts[i], -i))

    def ctl(self, index: int, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n <node> ARGS`` with this cluster's cookie and epmd."""
        r = subprocess.run([sys.executable, str(REAPER), str(CTL), "-n", self.nodes[index].name, *args],
                           env=self._env(self.nodes[index]),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.nodes[index].name} {' '.join(args)} failed "
                               f"({r.returncode}): {r.stdout}{r.stderr}")
        return r

    # -- inside ----------------------------------------------------------------------------------

    def _env(self, node: RabbitNode | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({"HOME": str(self.home), "ERL_EPMD_PORT": str(self.epmd_port),
                    "ERL_EPMD_ADDRESS": "127.0.0.1",
                    "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins")})
        if node is not None:
            env.update({
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(node.folder / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.folder / "log"),
                "RABBITMQ_CONFIG_FILE": str(node.folder / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.folder / "advanced.config"),
                "RABBITMQ_PID_FILE": str(node.pid_file),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(node.folder / "plugins-expand"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            })
        return env

    def _launch(self, index: int) -> None:
        node = self.nodes[index]
        with contextlib.suppress(FileNotFoundError):
            node.pid_file.unlink()
        # the reaper stays the parent of the node's processes (see reaper.py)
        node.keeper = subprocess.Popen([sys.executable, str(REAPER), str(SERVER), "-detached"], env=self._env(node),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _await_boot(self, index: int) -> None:
        node = self.nodes[index]
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while node.pid is None:
            node.pid = self._read_pid(node)
            if node.pid is None and node.keeper.poll() is not None:
                raise RuntimeError(f"node {node.name} did not start (exit {node.keeper.returncode}); "
                                   f"see {node.folder / 'log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} wrote no pid file in {BOOT_TIMEOUT_S} s; "
                                   f"see {node.folder / 'log'}")
            time.sleep(0.1)
        self.ctl(index, "wait", "--pid", str(node.pid), "--timeout", str(BOOT_TIMEOUT_S),
                 timeout=BOOT_TIMEOUT_S + 10)
        # "wait" returns once the app runs; the AMQP listener comes with it, but check it answers
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", node.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} runs but does not listen on {node.port}")
            time.sleep(0.1)

    def _reaped(self, node: RabbitNode) -> None:
        """Wait for the node's reaper to end: it does once every process of the node was reaped."""
        keeper, node.keeper, node.pid = node.keeper, None, None
        if keeper is None:
            return
        try:
            keeper.wait(10)
        except subprocess.TimeoutExpired:
            keeper.terminate()   # it SIGKILLs what is left of the node, reaps it, and ends
            keeper.wait(10)

    @staticmethod
    def _read_pid(node: RabbitNode) -> int | None:
        try:
            return int(node.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_epmd(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.epmd_port)) == 0:
                    return
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not listen on {self.epmd_port}")
            time.sleep(0.05)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
