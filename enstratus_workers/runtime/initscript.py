"""The logic of ``etc/init.d/enstratus-workers``: all daemons of one install, with LSB exit codes.

The shell script only finds the install root and a Python, then runs
``python -m enstratus_workers.runtime.initscript --home ROOT --bin-dir BIN VERB``. Daemons are
started and stopped through their bin wrappers (``services/worker/bin/<daemon>`` next to the init
script, so that the checkout's scripts can drive an install root given by ``ENSTRATUS_HOME``),
exactly as an operator would one at a time; status and clean read the pid files and /proc.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from enstratus_workers import errors
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from enstratus_workers.runtime import procs
from enstratus_workers.runtime.runner import STOP_MARGIN, format_uptime

#: started in this order; add a daemon here (and a bin wrapper) and every verb handles it
DAEMONS = ("publisher", "subscriber", "pinger", "admin")
#: the HTTP daemon: left out with --without-http, and by an install that has no wrapper for it
HTTP = "admin"
#: stopped in this order: the HTTP daemon first (no more changes come in), the subscriber last,
#: so that actions it is running can finish
STOP_ORDER = ("admin", "pinger", "publisher", "subscriber")
#: started by the subscriber, never by this script; stopped after it, if any are left
WORKER = "worker"
#: the kinds of process this script answers for (the KM service has its own script)
MANAGED = (*DAEMONS, WORKER)
#: how long ``clean`` lets a stray process stop before it is killed
CLEAN_GRACE = 5.0

VERBS = ("start", "stop", "restart", "force-reload", "try-restart", "status", "clean", "reload")


def main(argv: list[str] | None = None) -> int:
    """``enstratus-workers VERB [options]``; returns the LSB exit code (2 for an unknown verb)."""
    p = argparse.ArgumentParser(prog="enstratus-workers",
                                description="Start, stop and inspect the worker service's daemons.")
    p.add_argument("verb", choices=VERBS)
    p.add_argument("--home", help="install root (default: $ENSTRATUS_HOME or the checkout)")
    p.add_argument("--bin-dir", help="where the daemons' wrappers are (default: HOME/services/worker/bin)")
    p.add_argument("--grace", type=float, help="stop: seconds each daemon gets for a warm stop")
    p.add_argument("--without-http", action="store_true",
                   help=f"start, restart, status: leave out the HTTP daemon ({HTTP}: admin API, "
                        "status pages, metrics)")
    # tests point this at stand-in daemon modules; operators never need it
    p.add_argument("--module-prefix", default=procs.DAEMON_MODULE_PREFIX, help=argparse.SUPPRESS)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # usage error (LSB: invalid argument, 2) or --help (0)
        return exc.code if isinstance(exc.code, int) else errors.EXIT_INVALID_ARGUMENT
    layout = Layout(Path(args.home).resolve()) if args.home else Layout.from_env()
    bin_dir = Path(args.bin_dir) if args.bin_dir else layout.bin_dir
    init = InitScript(layout, bin_dir, args.grace, args.module_prefix, with_http=not args.without_http)
    if not bin_dir.is_dir():
        print(f"enstratus-workers: not installed: no {bin_dir}", file=sys.stderr)
        return errors.STATUS_UNKNOWN if args.verb == "status" else errors.EXIT_NOT_INSTALLED
    if args.verb == "reload":
        print("enstratus-workers: reload is not supported; use force-reload", file=sys.stderr)
        return errors.EXIT_UNIMPLEMENTED
    if args.verb in ("restart", "force-reload"):
        return init.stop() or init.start()
    if args.verb == "try-restart":
        if init.status(quiet=True) != errors.STATUS_RUNNING:
            print("enstratus-workers is not running: not restarted")
            return errors.EXIT_OK
        return init.stop() or init.start()
    return {"start": init.start, "stop": init.stop, "status": init.status, "clean": init.clean}[args.verb]()


class InitScript:
    """The verbs, over one install."""

    def __init__(self, layout: Layout, bin_dir: Path, grace: float | None,
                 module_prefix: str = procs.DAEMON_MODULE_PREFIX, *, with_http: bool = True):
        self.layout = layout
        self.bin_dir = bin_dir
        self.grace = grace
        self.prefix = module_prefix
        self.with_http = with_http

    @property
    def daemons(self) -> tuple[str, ...]:
        """The daemons start runs and status requires: the HTTP one only if wanted and installed
        (an install without its wrapper predates it, and runs without it as before)."""
        http = self.with_http and os.access(self.bin_dir / HTTP, os.X_OK)
        return tuple(d for d in DAEMONS if d != HTTP or http)

    # --- helpers ---

    def _wrapper(self, daemon: str, *args: str) -> int:
        wrapper = self.bin_dir / daemon
        if not os.access(wrapper, os.X_OK):
            print(f"{daemon}: {wrapper} is missing or not executable", file=sys.stderr)
            return errors.EXIT_NOT_INSTALLED
        sys.stdout.flush()
        env = dict(os.environ, ENSTRATUS_HOME=str(self.layout.home))
        return subprocess.run([str(wrapper), *args], env=env, check=False).returncode

    def _states(self) -> list[procs.DaemonState]:
        return procs.daemon_states(self.layout, self.prefix)

    def _strays(self) -> list[procs.DaemonProcess]:
        """Processes of this install that no live pid file accounts for, directly or as an ancestor."""
        live = {s.pid for s in self._states() if s.state == "running"}
        parents = {pid: st.ppid for pid in _all_pids() if (st := procs.stat(pid)) is not None}
        strays = []
        for proc in procs.find_daemon_processes(self.layout.home, self.prefix):
            if proc.daemon not in MANAGED:
                continue
            pid, seen = proc.pid, set()
            while pid > 1 and pid not in live and pid not in seen:
                seen.add(pid)
                pid = parents.get(pid, 0)
            if pid not in live:
                strays.append(proc)
        return strays

    def _grace(self) -> float:
        if self.grace is not None:
            return self.grace
        from enstratus_workers.config import load_settings
        from enstratus_workers.config.settings import WorkerSettings

        try:
            return load_settings(self.layout).subscriber.grace_period + STOP_MARGIN
        except ConfigError:
            return WorkerSettings().grace_period + STOP_MARGIN

    # --- verbs ---

    def start(self) -> int:
        """Start each daemon (a running one is left alone); 1 if any failed, 6 on a config error."""
        print("Starting enstratus-workers")
        failed = []
        for daemon in self.daemons:
            rc = self._wrapper(daemon, "start")
            if rc == errors.EXIT_NOT_CONFIGURED:
                # every daemon reads the same files: the others would fail the same way
                print("enstratus-workers: not started: fix the configuration first", file=sys.stderr)
                return errors.EXIT_NOT_CONFIGURED
            if rc != errors.EXIT_OK:
                failed.append(daemon)
        if failed:
            print(f"enstratus-workers: failed to start: {', '.join(failed)}", file=sys.stderr)
            return errors.EXIT_GENERIC
        return errors.EXIT_OK

    def stop(self) -> int:
        """Stop every daemon of the install, graceful then forceful, until no process is left.

        Order: daemons this script does not know (added later) first, then pinger, publisher,
        subscriber; then worker processes the subscriber left behind; then strays.
        """
        print("Stopping enstratus-workers")
        grace_args = ("--grace", f"{self.grace:g}") if self.grace is not None else ()
        by_kind: dict[str, list[procs.DaemonState]] = {}
        for s in self._states():
            by_kind.setdefault(s.daemon, []).append(s)
        others = sorted(k for k in by_kind if k not in STOP_ORDER and k != WORKER)
        ok = True
        for daemon in (*others, *STOP_ORDER):
            if not by_kind.get(daemon):
                print(f"{daemon} is not running")
            for s in by_kind.get(daemon, ()):
                ok &= self._wrapper(daemon, "stop", "--name", s.name, *grace_args) == errors.EXIT_OK
        ok &= self._stop_leftovers()
        return errors.EXIT_OK if ok else errors.EXIT_GENERIC

    def _stop_leftovers(self) -> bool:
        workers = [s for s in self._states() if s.daemon == WORKER]
        live = [s for s in workers if s.state == "running"]
        ok = True
        if live:
            print(f"stopping {len(live)} worker process(es) left behind by the subscriber")
            outcome = procs.terminate([s.pid for s in live], self._grace(), report=print)
            for s in live:
                print(f"{WORKER}@{s.name} (pid {s.pid}): {outcome[s.pid]}")
                ok &= outcome[s.pid] != "unkillable"
        for s in workers:
            if procs.pid_file_for(self.layout, WORKER, s.name, self.prefix).remove_stale() is not None:
                print(f"removed stale pid file {s.pid_file}")
        strays = self._strays()
        if strays:
            ok &= self._kill_strays(strays, CLEAN_GRACE)
        return ok

    def _kill_strays(self, strays: list[procs.DaemonProcess], grace: float) -> bool:
        outcome = procs.terminate([p.pid for p in strays], grace, report=print)
        for p in strays:
            print(f"stray {p.daemon}@{p.name} (pid {p.pid}, no pid file): {outcome[p.pid]}")
        return all(outcome[p.pid] != "unkillable" for p in strays)

    def status(self, quiet: bool = False) -> int:
        """One line per daemon instance (workers included); LSB status of the DAEMONS.

        0: every daemon runs; 1: one is dead with a pid file; 3: none runs, or some do not
        (which ones is printed).
        """
        out = (lambda *a, **k: None) if quiet else print
        states = self._states()
        summary = {}
        required = self.daemons
        for daemon in (*required, *sorted({s.daemon for s in states} - set(required))):
            mine = [s for s in states if s.daemon == daemon]
            if daemon in required:
                summary[daemon] = ("running" if any(s.state == "running" for s in mine)
                                   else "dead" if mine else "stopped")
            if not mine:
                out(f"{daemon} is stopped")
            for s in mine:
                if s.state == "running":
                    out(f"{s.daemon}@{s.name} is running (pid {s.pid}, up {format_uptime(s.uptime_s)})")
                else:
                    out(f"{s.daemon}@{s.name} is dead but its pid file {s.pid_file} exists (pid {s.pid})")
        for p in self._strays():
            out(f"stray {p.daemon}@{p.name} (pid {p.pid}) has no pid file: run 'clean'")
        values = set(summary.values())
        if values == {"running"}:
            return errors.STATUS_RUNNING
        if "dead" in values:
            return errors.STATUS_DEAD_WITH_PIDFILE
        if "running" in values:
            out(f"not running: {', '.join(d for d, v in summary.items() if v != 'running')}")
        return errors.STATUS_STOPPED

    def clean(self) -> int:
        """Kill strays (processes of this install without a live pid file); remove stale pid files."""
        did = False
        ok = True
        strays = self._strays()
        if strays:
            ok = self._kill_strays(strays, CLEAN_GRACE)
            did = True
        for s in self._states():
            if s.state != "running":
                if procs.pid_file_for(self.layout, s.daemon, s.name, self.prefix).remove_stale() is not None:
                    print(f"removed stale pid file {s.pid_file} (pid {s.pid} is not running)")
                    did = True
        if not did:
            print("nothing to clean")
        return errors.EXIT_OK if ok else errors.EXIT_GENERIC


def _all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


if __name__ == "__main__":
    raise SystemExit(main())
