"""Processes of this install, read from /proc: identity, uptime, discovery, and stopping them.

A pid alone is not an identity: pids are reused, and pid files under the install root outlive a
reboot. So "is this pid our daemon?" is answered from the process's command line (the daemon's
module, ``--home`` and ``--name``), and "is this still the process we signalled?" from its start
time, which together with the pid names one process for the life of the machine.
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

from enstratus_workers.daemon.pidfile import PidFile
from enstratus_workers.layout import Layout, short_hostname

log = logging.getLogger(__name__)

#: every daemon runs as ``python -m enstratus_workers.daemons.<daemon>``
DAEMON_MODULE_PREFIX = "enstratus_workers.daemons."
#: commands under which a process of ours is a daemon (``stop``/``status`` are short-lived clients)
DAEMON_COMMANDS = frozenset({"start", "run", "restart"})
#: after the second (cold) SIGTERM, how long before SIGKILL
COLD_STOP_WAIT = 5.0
_POLL = 0.05


# --- reading /proc -----------------------------------------------------------------------------

def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None if it is gone or unreadable (a zombie has an empty one)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat this module needs."""

    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # since boot, immune to wall-clock steps


def stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces and parentheses
    fields = raw[raw.rindex(")") + 2:].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def is_alive(pid: int) -> bool:
    """``os.kill(pid, 0)`` succeeds (or is refused: then it exists) and the process is no zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    st = stat(pid)
    return st is None or st.state not in ("Z", "X")


def uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started, from its start time in /proc/<pid>/stat."""
    st = stat(pid)
    if st is None:
        return None
    try:
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, since_boot - st.start_ticks / os.sysconf("SC_CLK_TCK"))


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
    ``--name`` means the default, the short host name).
    """

    module: str
    home: Path
    name: str

    def matches(self, argv: list[str] | None) -> bool:
        if not argv:
            return False
        if not any(a == self.module or os.path.basename(a) == self.module for a in argv):
            return False
        home = _option(argv, "--home")
        # a relative --home was relative to a working directory we cannot know: not evidence
        if home is not None and os.path.isabs(home) and not _same_path(home, self.home):
            return False
        return (_option(argv, "--name") or short_hostname()) == self.name

    def is_running(self, pid: int) -> bool:
        """``pid`` is alive and is this daemon (not a foreign process that reused the pid).

        When /proc hides the process (another user's, under ``hidepid``) the pid counts as ours:
        better to refuse a start than to run the daemon twice.
        """
        if not is_alive(pid):
            return False
        if not Path(f"/proc/{pid}").exists():
            return True
        return self.matches(cmdline(pid))


class DaemonProcess(NamedTuple):
    """A running process of this install: ``(pid, daemon, name)``."""

    pid: int
    daemon: str
    name: str


def find_daemon_processes(home: Path, module_prefix: str = DAEMON_MODULE_PREFIX) -> list[DaemonProcess]:
    """Every daemon process of the install at ``home``, found by scanning /proc/*/cmdline.

    A process counts when it runs a module under ``module_prefix``, with ``--home`` naming this
    install, under a daemon command (start, run, restart): a concurrent ``stop`` or ``status``
    client is not a daemon, and neither is this process.
    """
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        argv = cmdline(pid)
        if not argv:
            continue
        modules = [a for a in argv if a.startswith(module_prefix) and len(a) > len(module_prefix)]
        home_arg = _option(argv, "--home")
        if not modules or home_arg is None or not _same_path(home_arg, home):
            continue
        if not DAEMON_COMMANDS.intersection(argv) or not is_alive(pid):
            continue
        found.append(DaemonProcess(pid, modules[0][len(module_prefix):],
                                   _option(argv, "--name") or short_hostname()))
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


def pid_file_for(layout: Layout, daemon: str, name: str,
                 module_prefix: str = DAEMON_MODULE_PREFIX) -> PidFile:
    """The pid file of one instance, checked against that daemon's command line."""
    ident = Identity(module_prefix + daemon, layout.home, name)
    return PidFile(layout.pid_file(daemon, name), ident.is_running)


def daemon_states(layout: Layout, module_prefix: str = DAEMON_MODULE_PREFIX) -> list[DaemonState]:
    """Every ``<daemon>@<name>.pid`` under ``layout.run_dir``, sorted by daemon then name."""
    if not layout.run_dir.is_dir():
        return []
    states = []
    for path in sorted(layout.run_dir.glob("*@*.pid")):
        daemon, _, name = path.name[: -len(".pid")].partition("@")
        state, pid = pid_file_for(layout, daemon, name, module_prefix).state()
        if state == "stopped":  # removed while we looked
            continue
        states.append(DaemonState(daemon, name, pid, state,
                                  uptime(pid) if state == "running" else None, path))
    return states


# --- stopping ----------------------------------------------------------------------------------

def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = stat(int(entry.name))
            if st is not None:
                kids.setdefault(st.ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of ``pid`` now (once it dies they are reparented and lost)."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


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
    """One process being stopped, pinned by its start time so a reused pid is never signalled."""

    def __init__(self, pid: int):
        self.pid = pid
        st = stat(pid)
        self.start_ticks = st.start_ticks if st else None

    def alive(self) -> bool:
        st = stat(self.pid)
        return (st is not None and st.start_ticks == self.start_ticks and st.state not in ("Z", "X")
                and is_alive(self.pid))

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
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
