"""Hosts of a fleet on one machine, on the fleet tests' clusters: used by
``test_fleet_faults.py`` and ``bench/fleet.py`` (no pytest in here).

Each host is an install root of its own (``tests/servicehome.py``) with its own ``host.name``,
run and log folders, and the same ``mq.cfg`` node list (the RabbitMQ cluster, quorum queues,
one exchange and queue prefix for the fleet) and the same provisioning and analytics URLs (the
Galera cluster's three nodes, in the same order on every host). ``start()`` runs the init
script: publisher, subscriber, pinger and admin, as an operator starts a host.

The processes of a host are found by their command line naming its install root (every daemon
and worker process gets ``--home``), so a host is killed, frozen or let go by its pids only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests import servicehome as sh

CLK_TCK = os.sysconf("SC_CLK_TCK")


def fleet_names() -> dict[str, str]:
    """Names of the fleet's own: the two databases, the exchange, the queue prefix."""
    tag = uuid.uuid4().hex[:8]
    return {"prov": f"ewfleet_{tag}_prov", "anal": f"ewfleet_{tag}_anal",
            "exchange": f"ewfleet.{tag}", "queue_prefix": f"ewfleet.{tag}."}


@dataclass
class FleetHost:
    """One host of the fleet: its install root and its name."""

    home: Path
    name: str

    @property
    def run_dir(self) -> Path:
        return self.home / "services" / "worker" / "run"

    def start(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """``etc/init.d/enstratus-workers start``: publisher, subscriber, pinger, admin."""
        return subprocess.run([str(sh.INIT), "start"], env=sh.env_for(self.home), capture_output=True,
                              text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process of this host: daemons, worker processes, strays."""
        return sh.our_processes(self.home)

    def signal_all(self, signum: int) -> list[int]:
        """Send ``signum`` to every process of this host; the pids it went to."""
        sent = []
        for pid in self.pids():
            try:
                os.kill(pid, signum)
                sent.append(pid)
            except ProcessLookupError:
                pass
        return sent

    def kill(self) -> list[int]:
        """kill -9 every process of this host (daemons, pinger and its watchdog, workers)."""
        return self.signal_all(signal.SIGKILL)

    def roles(self) -> dict[int, str]:
        """Each process of this host by what it is: publisher, subscriber, pinger, admin, worker."""
        out = {}
        for pid in self.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            module = argv[argv.index(b"-m") + 1].decode() if b"-m" in argv[:-1] else ""
            out[pid] = module.rsplit(".", 1)[-1] if module.startswith("enstratus_workers") else "other"
        return out

    def hosts(self, timeout: float = 5) -> dict[str, dict]:
        """This host's ``GET /hosts``: the fleet as its admin daemon shows it, by host name."""
        url = (self.run_dir / f"admin@{self.name}.url").read_text().strip()
        token = (self.run_dir / "admin.token").read_text().strip()
        req = urllib.request.Request(url + "hosts", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return {h["name"]: h for h in json.load(r)}

    def state_of(self, other: str) -> str | None:
        """``other``'s state in this host's ``GET /hosts`` (None: not shown, or no answer)."""
        try:
            return self.hosts().get(other, {}).get("state")
        except (OSError, ValueError):
            return None


def make_fleet(root: Path, rabbit, galera, count: int, names: dict[str, str],
               worker_props: dict | None = None) -> list[FleetHost]:
    """``count`` install roots under ``root`` (keep it short: the worker sockets live under it),
    host1..hostN, on the clusters; nothing started."""
    hosts = []
    for i in range(1, count + 1):
        name = f"host{i}"
        home = sh.make_home(root / name, amqp={
            "host": rabbit.amqp_hosts(), "queue_type": "quorum", "exchange": names["exchange"],
            "queue_prefix": names["queue_prefix"]}, worker_props={
            "host.name": name, "provisioning.url": galera.url(names["prov"]),
            "analytics.url": galera.url(names["anal"]), **(worker_props or {})})
        # it holds the cluster's password: the daemons refuse a readable one
        (home / "services/worker/classes/worker.properties").chmod(0o600)
        hosts.append(FleetHost(home, name))
    return hosts


def open_fleet_databases(host: FleetHost):
    """The fleet's databases as ``host`` opens them (through the 3-node URLs), schema made."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    layout = Layout(host.home)
    return open_databases(load_settings(layout).worker, layout)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat``); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime, stime (fields 14, 15)
