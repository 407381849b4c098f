"""Scratch install roots for end-to-end tests and benchmarks: the repo's config files, edited."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INIT = REPO / "etc" / "init.d" / "enstratus-workers"


def set_keys(path: Path, values: dict) -> None:
    """Set ``key = value`` lines in a .cfg or .properties file, replacing existing ones."""
    text = path.read_text() if path.exists() else ""
    for key, value in values.items():
        line = f"{key} = {value}"
        pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*[=:].*$", re.M)
        text, n = pattern.subn(lambda _m: line, text)
        if not n:
            text += ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    path.write_text(text)


def make_home(tmp: Path, *, amqp: dict | None = None, mysql_url: str | None = None,
              worker_props: dict | None = None) -> Path:
    """A new install root under ``tmp`` with fresh keys; AMQP and MySQL if given, else embedded."""
    from enstratus_workers.config import ensure_provisioning_file
    from enstratus_workers.layout import Layout

    home = tmp / "home"
    shutil.copytree(REPO / "services" / "worker" / "classes", home / "services" / "worker" / "classes",
                    ignore=shutil.ignore_patterns("enstratus-provisioning.cfg"))
    classes = home / "services" / "worker" / "classes"
    if amqp:
        set_keys(classes / "mq.cfg", {"transport": "amqp", **amqp})
    props = {"pinger.heartbeat_interval": 1, "worker.grace_period": 10, **(worker_props or {})}
    if mysql_url:
        props.update({"provisioning.url": mysql_url, "analytics.url": mysql_url})
    set_keys(classes / "worker.properties", props)
    ensure_provisioning_file(Layout(home))
    any_admin_port(home)   # scratch homes run side by side: the admin daemon must not share a port
    return home


def env_for(home: Path) -> dict:
    return {**os.environ, "ENSTRATUS_HOME": str(home)}


def init(home: Path, verb: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(INIT), verb], env=env_for(home), capture_output=True, text=True, timeout=timeout)


def cli(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "enstratus_workers.cli", "--home", str(home), *args],
                          env=env_for(home), capture_output=True, text=True, timeout=timeout)


def our_processes(home: Path) -> list[int]:
    """Pids of any process whose command line names this install root (strays included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(home) in cmd and "enstratus_workers" in cmd and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the KM service of a scratch home, and what tests leave behind ------------------------------

KM_INIT = REPO / "etc" / "init.d" / "enstratus-km"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_km(home: Path, port: int | None = None) -> int:
    """Give ``home`` the repo's ``km.cfg`` with the KM on a free loopback port, and point the
    workers' ``enstratus-km-client.cfg`` at it (so tests never share port 2013); returns the port.

    The KM reads ``services/km/classes/km.cfg`` of its install root and the ENCRYPTION_KEY of the
    root's ``enstratus-provisioning.cfg``; its master key and credentials database are created
    under the root on first start.
    """
    port = free_port() if port is None else port
    km_classes = home / "services" / "km" / "classes"
    km_classes.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "services" / "km" / "classes" / "km.cfg", km_classes / "km.cfg")
    set_keys(km_classes / "km.cfg", {"port": port})
    set_keys(home / "services" / "worker" / "classes" / "enstratus-km-client.cfg", {"port": port})
    return port


def km_init(home: Path, verb: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``etc/init.d/enstratus-km VERB`` for the install root ``home``."""
    return subprocess.run([str(KM_INIT), verb], env=env_for(home), capture_output=True, text=True,
                          timeout=timeout)


def km_client(home: Path):
    """A ``KMClient`` configured as the workers of ``home`` configure theirs."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.km.client import KMClient
    from enstratus_workers.layout import Layout

    settings = load_settings(Layout(home))
    return KMClient(settings.km_client, settings.provisioning.encryption_key)


def kill_strays(home: Path) -> list[int]:
    """SIGKILL every process of ``home`` still alive (daemons, workers, KM, local-cloud agents
    whose log lives under ``home``); returns their pids. For a test's ``finally``."""
    import signal

    killed = []
    for pid in our_processes(home):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def any_admin_port(home: Path) -> None:
    """Let the HTTP admin daemon of ``home`` (if this install has one) listen on any free port
    instead of admin.cfg's fixed one, so scratch homes started at the same time do not collide."""
    cfg = home / "services" / "worker" / "classes" / "admin.cfg"
    if cfg.exists():
        set_keys(cfg, {"port": 0})


def submit_wait(home: Path, action: str, arguments: dict, *extra: str) -> dict:
    """``enstratus-workers submit ACTION --args JSON --wait --json``: the job as it ended."""
    import json

    r = cli(home, "submit", action, "--args", json.dumps(arguments), "--wait", "--json", *extra)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return json.loads(r.stdout)


def stored_server(home: Path, server_id: str) -> dict:
    """The server object as the persistence layer of this install holds it."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.layout import Layout
    from enstratus_workers.persist import open_store

    store = open_store(load_settings(Layout(home)).persistence, Layout(home))
    try:
        return dict(store.get("server", server_id).data)
    finally:
        store.close()
