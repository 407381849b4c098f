"""The pinger's watchdog: a publisher, subscriber or KM daemon that died comes back by itself.

Each round it looks at the pid files: a watched daemon with a stale pid file (it died without
cleaning up: killed, crashed), or a publisher/subscriber that is not running at all while the
pinger runs (the init script stops the pinger first, so that is never a deliberate stop of the
whole service), is started again through its own runner. Restarts are capped like worker
reincarnations: more than ``max_restarts`` in ``window_s`` and the daemon is left down and
reported, rather than restarted forever. Giving up sticks (the window sliding on would only
start the cycle again, five restarts every ``window_s`` for ever) until the daemon is seen
running again, started by an operator, or the pinger itself is restarted.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import defaultdict, deque

from enstratus_workers.runtime.procs import daemon_states

log = logging.getLogger(__name__)

ALWAYS = ("publisher", "subscriber")   # must run whenever the pinger does


class Watchdog:
    """Restarts the daemons of one install root (``layout``): the pid files under its run
    directory, started again with ``--home`` of that root. So it only ever restarts its own
    host's daemons, however many hosts' roots one machine holds; ``host_name`` is the name a
    publisher or subscriber with no pid file at all is started under (the host's, as the init
    script starts them)."""

    def __init__(self, layout, host_name: str, max_restarts: int = 5, window_s: float = 600.0,
                 enabled: bool = True):
        self.layout, self.enabled, self.host_name = layout, enabled, host_name
        self.max_restarts, self.window_s = max_restarts, window_s
        self._restarts: dict[str, deque] = defaultdict(deque)
        self.restarts_total = 0
        self.given_up: set[str] = set()

    def check(self, states: list | None = None) -> list[str]:
        """Restart what needs it; return a line per daemon restarted or given up on. ``states``:
        the pid files as just read (``daemon_states``), else they are read here."""
        if not self.enabled:
            return []
        done = []
        if states is None:
            states = daemon_states(self.layout)
        running = {(s.daemon, s.name) for s in states if s.state == "running"}
        wanted = {(s.daemon, s.name) for s in states if s.state != "running" and s.daemon in ALWAYS}
        for daemon in ALWAYS:
            if not any(d == daemon for d, _ in running | wanted):
                wanted.add((daemon, self.host_name))
        wanted |= self._dead_km()
        # an operator started again what was given up on: it gets the watchdog's care again
        self.given_up -= {f"{daemon}@{name}" for daemon, name in running}
        for daemon, name in sorted(wanted):
            if (daemon, name) in running:
                continue
            done.append(self._restart(daemon, name))
        return [line for line in done if line]

    def _dead_km(self) -> set[tuple[str, str]]:
        """A KM with a stale pid file (started here once, then died)."""
        run_dir = self.layout.km_dir / "run"
        found = set()
        for pid_file in run_dir.glob("km@*.pid") if run_dir.is_dir() else ():
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError, OSError):
                found.add(("km", pid_file.stem.split("@", 1)[1]))
        return found

    def _restart(self, daemon: str, name: str) -> str | None:
        key = f"{daemon}@{name}"
        if key in self.given_up:
            return None
        window = self._restarts[key]
        now = time.monotonic()
        while window and now - window[0] > self.window_s:
            window.popleft()
        if len(window) >= self.max_restarts:
            if key not in self.given_up:
                self.given_up.add(key)
                log.error("%s died %d times in %.0fs; not restarting it again", key, len(window), self.window_s)
                return f"gave up on {key}"
            return None
        window.append(now)
        self.restarts_total += 1
        cmd = [sys.executable, "-m", f"enstratus_workers.daemons.{daemon}", "start",
               "--home", str(self.layout.home), "--name", name]
        log.warning("watchdog: %s is down; starting it (restart %d in the window)", key, len(window))
        # stdin from /dev/null: a daemon has no fd 0, and a child started without one cannot daemonize
        result = subprocess.run(cmd, cwd=str(self.layout.home), capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "ENSTRATUS_HOME": str(self.layout.home)})
        if result.returncode != 0:
            log.error("watchdog: could not start %s: %s", key, (result.stdout + result.stderr).strip()[-500:])
            return f"failed to restart {key}"
        return f"restarted {key}"

    def snapshot(self) -> dict:
        return {"restarts": self.restarts_total, "given_up": sorted(self.given_up)}
