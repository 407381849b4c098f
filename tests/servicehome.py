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


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
