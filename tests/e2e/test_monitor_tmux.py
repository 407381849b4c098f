"""End to end: the terminal monitor in a real terminal (a detached tmux pane), read back by capture-pane.

Heartbeat rows are written into a scratch install's provisioning DB by the real HeartbeatStore,
as a running subscriber would; the monitor, a separate process, must show them, follow a resize,
and exit 0 on ``q``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests import servicehome as sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _need_tmux() -> str:
    """tmux's path; in CI a missing tmux is installed (or the test fails), elsewhere it skips."""
    found = shutil.which("tmux")
    if found:
        return found
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("tmux is not installed (apt-get install -y tmux) — needed to drive the monitor in a terminal")
    if shutil.which("apt-get") and os.geteuid() == 0:
        for step in (["apt-get", "install", "-y", "-q", "tmux"], ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "tmux"]):
            subprocess.run(step, capture_output=True, timeout=300)
            if shutil.which("tmux"):
                break
    found = shutil.which("tmux")
    if not found:
        pytest.fail("tmux is required in CI and could not be installed", pytrace=False)
    return found


class Tmux:
    """A private tmux server (its own socket, in a short temp dir) holding one session.

    ``kill`` ends the server and removes the socket's directory. The directory is short on
    purpose: a Unix socket path must fit in 108 bytes, which a pytest tmp_path may not.
    """

    def __init__(self, tmux: str):
        self.dir = Path(tempfile.mkdtemp(prefix="ewmon-"))
        self.base = [tmux, "-S", str(self.dir / "sock"), "-f", "/dev/null"]
        self.session = f"monitor-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.base + list(args), capture_output=True, text=True, timeout=15, check=check)

    def start(self, command: list[str], width: int, height: int, env: dict, status_file: Path) -> None:
        """Run ``command`` in a new pane; once it ends the pane stays (dead) to be looked at.

        One tmux invocation, so remain-on-exit is set before the command can end. The pane's shell
        writes the exit status to ``status_file``: tmux 3.3 sometimes marks a pane dead (its tty
        closed) without ever filling in ``pane_dead_status``.
        """
        shell = f"{shlex.join(command)}; echo $? > {shlex.quote(str(status_file))}"
        subprocess.run(self.base + ["start-server", ";", "set-option", "-wg", "remain-on-exit", "on", ";",
                                    "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                                    shell],
                       env=env, cwd=str(sh.REPO), capture_output=True, text=True, timeout=15, check=True)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def screen_with(self, *texts: str, max_lines: int | None = None) -> str | None:
        """The screen once it shows every one of ``texts`` (within ``max_lines`` rows), else None."""
        screen = self.screen()
        fits = max_lines is None or len(screen.splitlines()) <= max_lines
        return screen if fits and all(t in screen for t in texts) else None

    def exited(self) -> str | None:
        """``"dead"`` once the pane's process ended, ``"gone"`` if the session is; else None."""
        out = self.run("display-message", "-p", "-t", self.session, "#{pane_dead}", check=False)
        if out.returncode != 0:
            return "gone"
        return "dead" if out.stdout.strip() == "1" else None

    def kill(self) -> None:
        self.run("kill-server", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def home(tmp_path):
    """A scratch install whose DB holds a live subscriber with two workers and some jobs."""
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import NewJob, now_ms, open_databases
    from enstratus_workers.layout import Layout

    home = sh.make_home(tmp_path)
    layout = Layout(home)
    settings = load_settings(layout)
    dbs = open_databases(settings.worker, layout)
    try:
        workers = [{"name": "default.1", "display": "default@h.1", "type": "default", "pid": 4101,
                    "state": "working", "inflight": 2, "tasks_done": 17, "reincarnations": 1, "uptime_s": 3725},
                   {"name": "default.2", "display": "default@h.2", "type": "default", "pid": 4102,
                    "state": "idle", "inflight": 0, "tasks_done": 9, "reincarnations": 0, "uptime_s": 80}]
        dbs.heartbeats.beat("subscriber", "main", ttl_s=600, started_ms=now_ms() - 3_800_000, details={
            "workers": workers, "stats": {"received": 30, "succeeded": 26, "failed": 0, "dead_lettered": 0,
                                          "duplicates": 0},
            "pending": {"default": 4}, "inflight": 2, "recording": 1, "connected": True, "reconnects": 0})
        for _ in range(3):
            dbs.jobs.submit(NewJob("noop", "{}", "default", 3))
    finally:
        dbs.close()
    return home


def test_the_monitor_shows_the_workers_follows_a_resize_and_quits_on_q(home, tmp_path):
    tmux = Tmux(_need_tmux())
    status_file = tmp_path / "monitor.status"
    # a stale size in the environment (a shell's exported COLUMNS; pytest-xdist sets 80x24) must
    # not pin the monitor: it takes the terminal's own size
    env = {**{k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}, "COLUMNS": "80", "LINES": "24"}
    try:
        # Given the monitor running in a 160x40 terminal
        tmux.start([sys.executable, "-m", "enstratus_workers.monitor", "--home", str(home), "--refresh", "0.3"],
                   160, 40, env, status_file)
        # Then it shows the column header, the cluster line and a row per worker (waited for as a
        # whole: a capture may catch the screen mid-redraw, the rows there and the header not yet)
        header = ["Host", "Id", "Pid", "State", "Pool", "TQ", "RQ", "RC", "Done", "Up"]

        def drawn():
            screen = tmux.screen_with("default.2", "q quit")
            if screen and any(line.split()[:10] == header for line in screen.splitlines()):
                return screen
            return None

        screen = sh.wait_until(drawn, timeout=30)
        assert screen, f"the monitor never showed the workers under its header; the screen was:\n{tmux.screen()}"
        lines = screen.splitlines()
        cluster = next(line for line in lines if "subscriber@main@" in line)
        assert "RUNNING" in cluster and "TQ 6" in cluster and "RQ 1" in cluster and "RC 1" in cluster
        row = next(line for line in lines if "default.1" in line).split()
        assert row[1:] == ["default.1", "4101", "Working", "default", "2", "-", "1", "17", "1h02m"]
        assert any(line.startswith("jobs  pending 3") for line in lines)
        assert any(line.startswith("queues  default: ready 0") for line in lines)
        assert lines[-1].startswith("updated ") or any("q quit" in line for line in lines)

        # When the terminal shrinks, then the table is redrawn to the new size, footer included
        tmux.run("resize-window", "-t", tmux.session, "-x", "90", "-y", "20")
        small = sh.wait_until(lambda: tmux.screen_with("default.1", "q quit", max_lines=20), timeout=15)
        assert small, f"the monitor did not follow the resize:\n{tmux.screen()}"
        assert all(len(line) <= 90 for line in small.splitlines())

        # When q is pressed, then the process exits with status 0
        tmux.run("send-keys", "-t", tmux.session, "q")
        state = sh.wait_until(tmux.exited, timeout=15)
        assert state in ("dead", "gone"), f"the monitor did not exit on q:\n{tmux.screen()}"
        assert status_file.read_text().strip() == "0"
    finally:
        tmux.kill()
