"""Processes of this install, seen through psutil: identity, uptime, discovery, and stopping them.

A pid alone is not an identity: pids are reused, and pid files under the install root outlive a
reboot. So "is this pid our daemon?" is answered from the process's command line (the daemon's
module, ``--home`` and ``--name``) and, for a process that only looks like ours, from its start
time against the pid file's; "is this still the process we signalled?" is answered by psutil,
which pins a process by pid and start time.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import psutil

from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.runtime.pidfile import PidFile

log = logging.getLogger(__name__)

#: every daemon runs as ``python -m enstratus_workers.daemons.<daemon>``
DAEMON_MODULE_PREFIX = "enstratus_workers.daemons."
#: commands under which a process of ours is a daemon (``stop``/``status`` are short-lived clients)
DAEMON_COMMANDS = frozenset({"start", "run", "restart"})
#: after the second (cold) SIGTERM, how long before SIGKILL
COLD_STOP_WAIT = 5.0
#: a process created this long after its pid file was written did not write it; above psutil's
#: wall-clock start time error (the boot time it adds is whole seconds)
PID_FILE_SLACK_S = 2.0
_POLL = 0.05
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- one process -------------------------------------------------------------------------------

def _process(pid: int) -> psutil.Process | None:
    """psutil's handle on ``pid``, or None if it is gone or hidden from us."""
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, ValueError):  # ValueError: a negative pid
        return None


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None if it is gone or unreadable (a zombie has none)."""
    proc = _process(pid)
    try:
        return (proc.cmdline() or None) if proc is not None else None
    except psutil.Error:
        return None


class ProcStat(NamedTuple):
    """What this module needs to know of one process. ``state`` is psutil's status name."""

    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # since boot, immune to wall-clock steps


def stat(pid: int) -> ProcStat | None:
    # psutil reports the start as wall-clock time, boot time plus ticks; taking the boot time
    # away again gives the ticks. It is read first because psutil 5 adds the boot time it read last.
    boot = psutil.boot_time()
    proc = _process(pid)
    if proc is None:
        return None
    try:
        with proc.oneshot():
            ticks = round((proc.create_time() - boot) * _CLK_TCK)
            return ProcStat(proc.status(), proc.ppid(), os.getpgid(pid), os.getsid(pid), ticks)
    except (psutil.Error, OSError):
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (as /proc/<pid>/stat says), or None if it is
    gone, hidden or a zombie. With the pid it names one process for the life of the machine."""
    st = stat(pid)
    return None if st is None or st.state in _GONE else st.start_ticks


def is_alive(pid: int) -> bool:
    """``os.kill(pid, 0)`` succeeds (or is refused: then it exists) and the process is no zombie."""
    if pid <= 0 or not psutil.pid_exists(pid):
        return False
    st = stat(pid)
    return st is None or st.state not in _GONE


def is_same_process(pid: int, ticks: int | str | None) -> bool:
    """``pid`` is alive and is the process that started at ``ticks`` (None: any process).

    A process we may signal but not see (another user's, under ``hidepid``) counts as the same.
    """
    if not is_alive(pid):
        return False
    now = start_ticks(pid)
    return ticks is None or now is None or str(now) == str(ticks)


def uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started (to the clock tick: both ends are counted from boot)."""
    st = stat(pid)
    if st is None:
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - st.start_ticks / _CLK_TCK)


def _option(argv: list[str], option: str) -> str | None:
    """The value of ``--option VALUE`` or ``--option=VALUE`` (the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1:]
    return value


def _same_path(a: str, b: Path) -> bool:
    if not os.path.isabs(a):
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# --- identity ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """What the command line of one daemon instance looks like.

    ``module`` is what follows ``python -m`` (or the script's file name); ``home`` and ``name`` are
    compared when the command line states them (the bin wrappers always pass ``--home``; a missing
    ``--name`` means the default, the install's host name: ``default_name``, read from the install
    when not given).
    """

    module: str
    home: Path
    name: str
    default_name: str = ""

    def matches(self, argv: list[str] | None) -> bool:
        if not argv:
            return False
        if not any(a == self.module or os.path.basename(a) == self.module for a in argv):
            return False
        home = _option(argv, "--home")
        # a relative --home was relative to a working directory we cannot know: not evidence
        if home is not None and os.path.isabs(home) and not _same_path(home, self.home):
            return False
        return (_option(argv, "--name") or self.default_name or install_host_name(self.home)) == self.name

    def is_running(self, pid: int, written_at: float | None = None) -> bool:
        """``pid`` is alive and is this daemon (not a foreign process that reused the pid).

        A process with this command line under a daemon command is this daemon. A look-alike (a
        ``stop`` or ``status`` client has the same module, home and name) is ours only if it
        existed when the pid file was written at ``written_at`` (its mtime): created later, it
        got the pid by reuse. The start time is not asked of a daemon: a wall clock stepped
        forward (NTP at boot) would make it look younger than its file.
        When psutil cannot see the process (another user's, under ``hidepid``) the pid counts as
        ours: better to refuse a start than to run the daemon twice.
        """
        if not is_alive(pid):
            return False
        proc = _process(pid)
        if proc is None:
            return True
        argv = cmdline(pid)
        if not self.matches(argv):
            return False
        if written_at is None or DAEMON_COMMANDS.intersection(argv):
            return True
        try:
            return proc.create_time() <= written_at + PID_FILE_SLACK_S
        except psutil.Error:
            return False


class DaemonProcess(NamedTuple):
    """A running process of this install: ``(pid, daemon, name)``."""

    pid: int
    daemon: str
    name: str


def find_daemon_processes(home: Path, module_prefix: str = DAEMON_MODULE_PREFIX) -> list[DaemonProcess]:
    """Every daemon process of the install at ``home``, found by their command lines.

    A process counts when it runs a module under ``module_prefix``, with ``--home`` naming this
    install, under a daemon command (start, run, restart): a concurrent ``stop`` or ``status``
    client is not a daemon, and neither is this process.
    """
    found = []
    me = os.getpid()
    default = install_host_name(home)
    for proc in psutil.process_iter(["cmdline"]):
        pid, argv = proc.pid, proc.info["cmdline"]
        if not argv or pid == me:
            continue
        modules = [a for a in argv if a.startswith(module_prefix) and len(a) > len(module_prefix)]
        home_arg = _option(argv, "--home")
        if not modules or home_arg is None or not _same_path(home_arg, home):
            continue
        if not DAEMON_COMMANDS.intersection(argv) or not is_alive(pid):
            continue
        found.append(DaemonProcess(pid, modules[0][len(module_prefix):],
                                   _option(argv, "--name") or default))
    return sorted(found)


# --- pid files of an install -------------------------------------------------------------------

@dataclass(frozen=True)
class DaemonState:
    """One pid file under the run directory and what it says.

    ``state`` is "running" (the pid is alive and is this daemon) or "dead" (the file is stale);
    the runner's ``status`` also uses "stopped" (no file). ``pid`` is None when the file holds no
    pid; ``uptime_s`` is None unless running.
    """

    daemon: str
    name: str
    pid: int | None
    state: str
    uptime_s: float | None
    pid_file: Path

    def as_dict(self) -> dict:
        """The JSON shape of ``status --json``."""
        return {"daemon": self.daemon, "name": self.name, "pid": self.pid, "state": self.state,
                "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 1)}


def install_host_name(home: Path) -> str:
    """The default daemon name of the install at ``home``: its ``host.name``, else the system's
    short host name (also when the file is bad: then no daemon of it can have started unnamed)."""
    from enstratus_workers.config import worker_file
    from enstratus_workers.errors import ConfigError

    try:
        return worker_file.read_host_name(Layout(Path(home)).classes_dir / worker_file.FILENAME)
    except ConfigError:
        return short_hostname()


def pid_file_for(layout: Layout, daemon: str, name: str,
                 module_prefix: str = DAEMON_MODULE_PREFIX, default_name: str = "") -> PidFile:
    """The pid file of one instance, checked against that daemon's command line."""
    return checked_pid_file(layout.pid_file(daemon, name),
                            Identity(module_prefix + daemon, layout.home, name, default_name))


def checked_pid_file(path: Path, ident: Identity) -> PidFile:
    """A pid file whose pid is running when it is ``ident``'s process (see ``Identity.is_running``:
    the file's mtime tells a look-alike that reused the pid from the process that wrote it)."""
    path = Path(path)

    def is_running(pid: int) -> bool:
        try:
            written_at = path.stat().st_mtime
        except OSError:  # gone meanwhile: only the command line is left to tell
            written_at = None
        return ident.is_running(pid, written_at)

    return PidFile(path, is_running)


def daemon_states(layout: Layout, module_prefix: str = DAEMON_MODULE_PREFIX) -> list[DaemonState]:
    """Every ``<daemon>@<name>.pid`` under ``layout.run_dir``, sorted by daemon then name."""
    if not layout.run_dir.is_dir():
        return []
    states = []
    default = install_host_name(layout.home)
    for path in sorted(layout.run_dir.glob("*@*.pid")):
        daemon, _, name = path.name[: -len(".pid")].partition("@")
        state, pid = pid_file_for(layout, daemon, name, module_prefix, default).state()
        if state == "stopped":  # removed while we looked
            continue
        states.append(DaemonState(daemon, name, pid, state,
                                  uptime(pid) if state == "running" else None, path))
    return states


# --- stopping ----------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of ``pid`` now (once it dies they are reparented and lost)."""
    proc = _process(pid)
    try:
        return [p.pid for p in proc.children(recursive=True)] if proc is not None else []
    except psutil.Error:
        return []


def owned_group(pid: int) -> int | None:
    """The process group that belongs to ``pid`` alone, if any, for a final SIGKILL.

    A daemonized process sits in a session of its own (python-daemon's setsid) whose parent is
    outside it; everything in that group is the daemon's. A process run in the foreground, or a
    worker process spawned by the subscriber, shares its group with others: killing that group
    would kill the shell or the subscriber, so there is none to kill.
    """
    st = stat(pid)
    if st is None or st.pgrp != st.session or st.pgrp in (os.getpgrp(), os.getsid(0)):
        return None
    parent = stat(st.ppid)
    if parent is not None and parent.session == st.session:
        return None
    return st.pgrp


class _Target:
    """One process being stopped, pinned by psutil (pid and start time), so a reused pid is never
    signalled. A process psutil cannot see is never signalled either."""

    def __init__(self, pid: int):
        self.pid = pid
        self.proc = _process(pid)

    def alive(self) -> bool:
        try:
            return (self.proc is not None and self.proc.is_running()
                    and self.proc.status() not in _GONE)
        except psutil.Error:
            return False

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                self.proc.send_signal(signum)  # refuses a pid reused since alive() looked
            except psutil.NoSuchProcess:
                pass


def _wait(targets: list[_Target], timeout: float) -> list[_Target]:
    deadline = time.monotonic() + timeout
    alive = [t for t in targets if t.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL)
        alive = [t for t in alive if t.alive()]
    return alive


def terminate(pids: Iterable[int], grace: float, cold_wait: float = COLD_STOP_WAIT,
              report: Callable[[str], None] = lambda msg: None) -> dict[int, str]:
    """Stop processes: SIGTERM (warm stop), after ``grace`` s SIGTERM again (cold), then SIGKILL.

    The SIGKILL also takes the process's descendants and its own process group, so no worker
    process or action subprocess outlives a daemon that had to be killed. All ``pids`` are stopped
    in parallel. Returns pid -> "stopped" | "stopped (cold)" | "killed" | "not running" |
    "unkillable", and calls ``report`` with each escalation.
    """
    def say(msg: str) -> None:
        log.info("%s", msg)
        report(msg)

    targets = [_Target(p) for p in pids]
    outcome = {t.pid: "not running" for t in targets if not t.alive()}
    live = [t for t in targets if t.pid not in outcome]
    for t in live:
        t.signal(signal.SIGTERM)
    rest = _wait(live, grace)
    outcome.update({t.pid: "stopped" for t in live if t not in rest})
    if rest:
        say(f"pid {', '.join(str(t.pid) for t in rest)} still running after {grace:g} s: "
            f"second SIGTERM (cold stop)")
        for t in rest:
            t.signal(signal.SIGTERM)
        cold = rest
        rest = _wait(cold, cold_wait)
        outcome.update({t.pid: "stopped (cold)" for t in cold if t not in rest})
    if rest:
        for t in rest:
            _kill_tree(t, say)
        dead = rest
        rest = _wait(dead, 5.0)
        outcome.update({t.pid: "unkillable" if t in rest else "killed" for t in dead})
    return outcome


def _kill_tree(target: _Target, report: Callable[[str], None]) -> None:
    group = owned_group(target.pid)
    tree = [_Target(p) for p in descendants(target.pid)]
    target.signal(signal.SIGKILL)
    for t in tree:
        t.signal(signal.SIGKILL)
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
    report(f"pid {target.pid} did not stop: killed with SIGKILL"
           + (f" with {len(tree)} descendant(s)" if tree else "")
           + (f" and process group {group}" if group is not None else ""))
