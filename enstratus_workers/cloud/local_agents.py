"""Starting the guest-agent processes that are the local cloud's "machines".

Each machine is ``python -m enstratus_workers.guest.agent --detach``: the agent binds its port,
forks, and the parent prints the port and the child's pid and exits. So the launcher waits only
for that short-lived parent (no zombie, no stray ``Popen``), and the agent runs on in a session of
its own, outliving the worker process that launched it, as servers outlive their launcher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from libcloud.common.types import LibcloudError

import enstratus_workers
from enstratus_workers.cloud import process

LAUNCH_TIMEOUT = 20.0


@dataclass(frozen=True)
class Launched:
    port: int
    pid: int
    pid_start: int | None


def _environment() -> dict:
    # the agent must import this package even when the worker runs from a bare checkout
    env = dict(os.environ)
    root = str(Path(enstratus_workers.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def launch(agent_id: str, port: int, log_path: Path, alive_interval: float,
           host: str = "127.0.0.1") -> Launched:
    """Start one detached agent on ``port`` (0: a free one); raise ``LibcloudError`` if it fails."""
    cmd = [sys.executable, "-m", "enstratus_workers.guest.agent", "--host", host,
           "--port", str(port), "--server-id", agent_id, "--log", str(log_path),
           "--alive-interval", repr(float(alive_interval)), "--detach"]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                              env=_environment(), timeout=LAUNCH_TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise LibcloudError(f"the agent of {agent_id} did not start within {LAUNCH_TIMEOUT:g}s") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise LibcloudError(f"the agent of {agent_id} failed to start: {reason[0]}")
    try:
        info = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
        launched_port, pid = int(info["port"]), int(info["pid"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise LibcloudError(f"the agent of {agent_id} printed no port and pid") from None
    return Launched(launched_port, pid, process.start_ticks(pid))
