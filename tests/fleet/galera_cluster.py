"""A MariaDB Galera cluster of the test's own: three ``mariadbd`` beside the machine's MariaDB.

Never the server on 3306: each node has its own free loopback ports (SQL, gcomm, IST, rsync
SST), its own datadir under one temporary folder owned by the ``mysql`` user (rsync state
transfer writes as that user), its own cluster name, and is started ``mariadbd --no-defaults
--user=mysql`` (as root), so no system option file is read. Node 1 gets a fresh datadir from
``mariadb-install-db`` and bootstraps the cluster (``--wsrep-new-cluster``); the others start
empty and receive the data by state transfer (SST) from a synced member. A node stopped or
killed later rejoins with the datadir it had, by incremental transfer (IST) when the donor's
cache still holds what it missed.

Each ``mariadbd`` is the leader of a process group of its own, so the state-transfer scripts and
the ``rsync --daemon`` they start go with it. ``close()`` kills every group by its pid (and any
leftover process naming the folder), then removes the folder: nothing outlives the test.

The nodes run a copy of ``mariadbd`` in the folder, not ``/usr/sbin/mariadbd`` itself: tools that
find "the" MariaDB by its executable (``start-stop-daemon --exec /usr/sbin/mariadbd``, as
``tests/e2e/test_chaos.py`` restarts the machine's server) must neither stop these nodes nor take
them for the machine's server and leave that one down.

    cluster = GaleraCluster.start(size=3)
    url = cluster.url("provisioning")          # mysql+pymysql://ewgalera:pw@127.0.0.1:p1,...,p3/provisioning
    cluster.stop_node(0); cluster.start_node(0)
    cluster.close()
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fleet.ports import free_ports

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
USER = "ewgalera"            # the SQL user the tests connect as (with a password: URLs hold secrets)
SYNCED = "4"


def missing() -> str | None:
    """Why a cluster cannot be started on this machine (None: it can)."""
    if os.geteuid() != 0:
        return "the Galera harness starts mariadbd --user=mysql, which needs root"
    for tool in ("mariadbd", "mariadb-install-db", "rsync"):
        if _which(tool) is None:
            return f"{tool} is not installed (Debian: mariadb-server, galera-4, rsync)"
    if not PROVIDER.exists():
        return f"the Galera provider {PROVIDER} is not installed (Debian: galera-4)"
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "there is no mysql user (Debian's mariadb-server makes it)"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


@dataclass
class Node:
    index: int                     # 0-based
    sql: int
    gcomm: int
    ist: int
    sst: int
    datadir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sql}"

    @property
    def socket(self) -> Path:
        return self.datadir.parent / f"{self.name}.sock"

    @property
    def error_log(self) -> Path:
        return self.datadir.parent / f"{self.name}.err"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class GaleraCluster:
    """Start with ``GaleraCluster.start()``; every method takes 0-based node indexes."""

    def __init__(self, root: Path, size: int):
        self.root = root
        self.name = f"ewgalera-{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(12)
        # below the ephemeral range (ports.py), so a node started again finds them free; above
        # the RabbitMQ cluster's CLI tools' distribution ports (rabbit_cluster.py)
        ports = free_ports(4 * size, 25000)
        self.nodes = [Node(i, *ports[4 * i:4 * i + 4], datadir=root / f"node{i + 1}") for i in range(size)]
        self.started_in: float | None = None     # seconds start() took, for the curious
        self.mariadbd = root / "mariadbd"          # the nodes' own copy (module docstring)

    # -- life ----------------------------------------------------------------------------------
    @classmethod
    def start(cls, size: int = 3, timeout: float = 90.0) -> "GaleraCluster":
        """A running cluster of ``size`` synced nodes; everything is torn down if it fails."""
        began = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="ewgalera-"))
        cluster = cls(root, size)
        try:
            for node in cluster.nodes:
                node.datadir.mkdir()
            shutil.copy2(_which("mariadbd"), cluster.mariadbd)
            _chown_tree(root, "mysql")
            cluster._install(cluster.nodes[0])
            cluster.start_node(0, bootstrap=True, timeout=timeout)
            cluster._create_user()
            for node in cluster.nodes[1:]:   # they join empty: a state transfer gives them the data
                cluster.start_node(node.index, wait=False)
            for node in cluster.nodes[1:]:
                cluster.wait_synced(node.index, timeout)
        except BaseException:
            cluster.close()
            raise
        cluster.started_in = time.monotonic() - began
        return cluster

    def close(self) -> None:
        """Kill every node's process group and whatever else runs from the folder; remove it."""
        for node in self.nodes:
            if node.proc is not None:
                _kill_group(node.proc)
                node.proc = None
        for pid in self._strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _strays(self) -> list[int]:
        """Pids of processes whose command line names this cluster's folder (SST leftovers)."""
        mark = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if mark in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    # -- nodes ---------------------------------------------------------------------------------
    def start_node(self, i: int, *, bootstrap: bool = False, wait: bool = True, timeout: float = 90.0) -> None:
        """Start node ``i``: it joins the others and gets what it misses by IST, else by an
        rsync SST; with ``bootstrap`` it forms a new cluster alone."""
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"{node.name} is running already")
        if bootstrap:
            _safe_to_bootstrap(node.datadir)
        if not node.error_log.exists():   # mariadbd writes it too, as mysql
            node.error_log.touch()
            _chown_tree(node.error_log, "mysql")
        log = open(node.error_log, "ab")
        try:
            node.proc = subprocess.Popen(self._args(node, bootstrap), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        if wait:
            self.wait_synced(i, timeout)

    def stop_node(self, i: int, timeout: float = 60.0) -> None:
        """A clean shutdown (SIGTERM): the node leaves the cluster gracefully."""
        node = self.nodes[i]
        if not node.running:
            return
        node.proc.terminate()
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(node.proc)
        node.proc = None

    def kill_node(self, i: int) -> None:
        """SIGKILL, as a crash or a power cut: the others notice it only by its silence."""
        node = self.nodes[i]
        if node.proc is not None:
            _kill_group(node.proc)
            node.proc = None

    def wait_synced(self, i: int, timeout: float = 90.0) -> None:
        """Until node ``i`` reads ``wsrep_local_state = 4`` (Synced); fails if it died."""
        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        while True:
            if not node.running:
                raise RuntimeError(f"{node.name} exited while starting:\n{self.log_tail(i)}")
            if self.state(i) == SYNCED:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} not synced after {timeout:.0f}s:\n{self.log_tail(i)}")
            time.sleep(0.1)

    def state(self, i: int) -> str | None:
        """Node ``i``'s ``wsrep_local_state`` ("4" synced), None if it does not answer."""
        try:
            rows = self.sql(i, "SHOW GLOBAL STATUS LIKE 'wsrep_local_state'")
        except Exception:  # noqa: BLE001 - not up (yet)
            return None
        return rows[0][1] if rows else None

    def heal(self, timeout: float = 90.0) -> None:
        """Every node running and synced again (after a test stopped or killed some): bootstraps
        from the last node that held the data if none runs."""
        down = [n.index for n in self.nodes if not n.running]
        if len(down) == len(self.nodes):
            first = _safest(self.nodes)
            self.start_node(first, bootstrap=True, timeout=timeout)
            down.remove(first)
        for i in down:
            self.start_node(i, wait=False)
        for i in down:
            self.wait_synced(i, timeout)

    # -- talking to it -------------------------------------------------------------------------
    def url(self, database: str, nodes: list[int] | None = None) -> str:
        """The service's URL for ``database`` naming ``nodes`` (default: all, in order)."""
        chosen = [self.nodes[i] for i in (range(len(self.nodes)) if nodes is None else nodes)]
        hosts = ",".join(n.address for n in chosen)
        return f"mysql+pymysql://{USER}:{self.password}@{hosts}/{database}"

    def sql(self, i: int, statement: str, *args):
        """Run one statement on node ``i`` as root over its socket (autocommit); its rows."""
        import pymysql

        # The socket is ours, closed whatever happens: PyMySQL leaves its own open when a node
        # that is still starting refuses the handshake (a ResourceWarning, an error under -W error).
        path = str(self.nodes[i].socket)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(path)
            conn = pymysql.connect(unix_socket=path, user="root", autocommit=True, read_timeout=30,
                                   defer_connect=True)
            conn.connect(sock)
            try:
                with conn.cursor() as cur:
                    cur.execute(statement, args or None)
                    return cur.fetchall()
            finally:
                conn.close()
        finally:
            sock.close()

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            return "\n".join(self.nodes[i].error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- setting up ----------------------------------------------------------------------------
    def _install(self, node: Node) -> None:
        done = subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={node.datadir}",
                               "--user=mysql", "--auth-root-authentication-method=normal",
                               "--skip-test-db", "--innodb-log-file-size=16M"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"mariadb-install-db failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _create_user(self) -> None:
        self.sql(0, f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY %s", self.password)
        self.sql(0, f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'")

    def _args(self, node: Node, bootstrap: bool) -> list[str]:
        members = ",".join(f"127.0.0.1:{n.gcomm}" for n in self.nodes)
        provider_options = ";".join([
            f"base_port={node.gcomm}", f"ist.recv_addr=127.0.0.1:{node.ist}",
            "gcache.size=64M",
            "evs.suspect_timeout=PT3S", "evs.inactive_timeout=PT6S",  # notice a killed node sooner
        ])
        args = [
            str(self.mariadbd), "--no-defaults", "--user=mysql", "--basedir=/usr",
            f"--datadir={node.datadir}", f"--socket={node.socket}",
            f"--pid-file={node.datadir.parent / (node.name + '.pid')}",
            f"--port={node.sql}", "--bind-address=127.0.0.1", "--skip-name-resolve",
            f"--log-error={node.error_log}",
            "--binlog_format=ROW", "--default_storage_engine=InnoDB", "--innodb_autoinc_lock_mode=2",
            # small and quick: a test cluster holds little, and durability comes from the others
            "--innodb_buffer_pool_size=32M", "--innodb_log_file_size=16M",
            "--innodb_flush_log_at_trx_commit=2", "--max_connections=300",
            "--character-set-server=utf8mb4",
            "--wsrep_on=ON", f"--wsrep_provider={PROVIDER}",
            f"--wsrep_cluster_name={self.name}", f"--wsrep_node_name={node.name}",
            f"--wsrep_node_address=127.0.0.1:{node.gcomm}",
            f"--wsrep_cluster_address=gcomm://{members}",
            "--wsrep_sst_method=rsync", f"--wsrep_sst_receive_address=127.0.0.1:{node.sst}",
            f"--wsrep_provider_options={provider_options}",
        ]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        return args


def _chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for path in [root, *(root.rglob("*") if root.is_dir() else ())]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the node's process group (mariadbd and its SST scripts and rsync), and reap it.
    Only while mariadbd is unreaped: its pid (the group's id) is then still ours, never reused;
    children it left when it died are found by ``GaleraCluster._strays``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


def _grastate(datadir: Path) -> dict[str, str]:
    try:
        text = (datadir / "grastate.dat").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _safe_to_bootstrap(datadir: Path) -> None:
    """Let a node that was not the last to stop bootstrap anyway (the test knows it holds the data)."""
    path = datadir / "grastate.dat"
    if path.exists():
        path.write_text(path.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"))


def _safest(nodes: list[Node]) -> int:
    """The node to bootstrap from after all stopped: the one Galera marked safe, else the first."""
    for n in nodes:
        if _grastate(n.datadir).get("safe_to_bootstrap", "").strip() == "1":
            return n.index
    return 0
