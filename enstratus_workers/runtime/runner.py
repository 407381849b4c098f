"""Runs one daemon: ``start|stop|status|run|restart``, the pid file, daemonizing, signals and logs.

Each daemon module hands ``main`` a ``build(settings, layout, name, options) -> Service``; this
module does everything around ``Service.run``. The order in which a daemon comes up is chosen so
that an operator always learns why it did not:

1. settings are loaded and validated in the calling process, before any fork: a bad config file
   is reported on the terminal (exit 6) and nothing starts;
2. ``start`` forks; the child daemonizes with python-daemon and the parent waits on a readiness
   pipe, so ``start`` only says "started" once the service called ``ready()``, and otherwise
   prints the daemon's error and where its log is;
3. the daemon writes its own pid file (see ``pidfile``), builds the service, runs it, and removes
   the pid file on the way out, whatever the way out.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from enstratus_workers import errors
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import (
    BadName,
    Layout,
    check_daemon_name,
    inside,
    short_hostname,
)
from enstratus_workers.runtime import logtarget, privileges, procs
from enstratus_workers.runtime.logs import DaemonLog
from enstratus_workers.runtime.pidfile import DEAD, RUNNING, AlreadyRunning, PidFile
from enstratus_workers.runtime.sdnotify import SystemdNotifier
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)

COMMANDS = ("start", "stop", "status", "run", "restart")
READY_TIMEOUT = 30.0   # seconds ``start`` waits for the daemon's ready()
STOP_MARGIN = 5.0      # default --grace = the workers' grace period + this

Build = Callable[[Any, Layout, str, argparse.Namespace], Service]
SettingsLoader = Callable[[Layout], Any]


def main(daemon: str, build: Build, argv: list[str] | None = None,
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, *,
         settings_loader: SettingsLoader | None = None, module: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and carry out one command; returns the exit code.

    ``settings_loader(layout)`` replaces the config package (tests inject one). ``module`` is what
    the daemon's command line runs (default: the ``__main__`` module, e.g.
    ``enstratus_workers.daemons.publisher``); it tells our daemon from a process that reused its pid.
    """
    parser = _parser(daemon, add_arguments)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else errors.EXIT_INVALID_ARGUMENT
    layout = Layout(Path(args.home).resolve()) if args.home else Layout.from_env()
    if args.name is None:
        name = default_name(daemon, layout, args.command)
        if name is None:
            return errors.EXIT_NOT_CONFIGURED
    else:
        name = args.name  # "--name ''" is no name
    try:
        # the name becomes file names under run/ and log/: checked before anything is written
        check_daemon_name(name)
    except BadName as exc:
        hint = "" if args.name is not None else " (the default, this host's name: give one with --name)"
        print(f"{daemon}: --name: {exc}{hint}", file=sys.stderr)
        # LSB: 2 is "invalid argument" for the actions; status has only 4, "unknown"
        return errors.STATUS_UNKNOWN if args.command == "status" else errors.EXIT_INVALID_ARGUMENT
    ctx = _Context(daemon, name, layout, module or _main_module(), args, build, settings_loader)
    if args.command == "status":
        return _status(ctx)
    if args.command == "stop":
        return _stop(ctx)
    if args.command == "restart":
        if _stop(ctx) != errors.EXIT_OK:
            return errors.EXIT_GENERIC
    return _start(ctx, foreground=args.command == "run")


def default_name(daemon: str, layout: Layout, command: str) -> str | None:
    """A daemon's name when ``--name`` is not given: its host's (``host.name`` of
    ``worker.properties``, else the system's short host name), so the install roots of several
    hosts on one machine name their files apart. A bad ``host.name`` stops a start (None: the
    caller exits 6); ``status`` and ``stop`` warn and go by the system's name, so a broken file
    never keeps the operator from stopping what runs."""
    from enstratus_workers.config import worker_file

    try:
        return worker_file.read_host_name(layout.classes_dir / worker_file.FILENAME)
    except ConfigError as exc:
        if command in ("status", "stop"):
            print(f"{daemon}: {exc}; going by this system's short host name", file=sys.stderr)
            return short_hostname()
        print(f"{daemon}: configuration error: {exc}", file=sys.stderr)
        return None


def _parser(daemon: str, add_arguments) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=daemon, description=f"Run the {daemon} daemon.")
    p.add_argument("command", choices=COMMANDS,
                   help="start (daemonize), run (foreground), stop, restart, status")
    p.add_argument("--name", help="instance name (default: host.name of worker.properties, "
                                  "else the short host name)")
    p.add_argument("--home", help="install root (default: $ENSTRATUS_HOME or the checkout)")
    p.add_argument("--grace", type=float,
                   help="stop: seconds to wait for a warm stop before a cold one "
                        f"(default: the workers' grace period + {STOP_MARGIN:g})")
    p.add_argument("--wait", type=float, default=READY_TIMEOUT,
                   help="start: seconds to wait for the daemon to be ready (default %(default)s)")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default %(default)s")
    p.add_argument("--ready-fd", type=int,
                   help="run: write 'ok <pid>' (or 'error <text>') to this inherited fd once ready")
    if add_arguments is not None:
        add_arguments(p)
    return p


def _main_module() -> str:
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""


@dataclass
class _Context:
    daemon: str
    name: str
    layout: Layout
    module: str
    args: argparse.Namespace
    build: Build
    loader: SettingsLoader | None
    journal: bool = False   # log to stderr only, no file (``logtarget``); decided by _start

    @property
    def label(self) -> str:
        return f"{self.daemon}@{self.name}"

    @property
    def log_file(self) -> Path:
        return daemon_files(self.layout, self.daemon, self.name)[1]

    def pid_file(self) -> PidFile:
        ident = procs.Identity(self.module, self.layout.home, self.name, procs.install_host_name(self.layout.home))
        return PidFile(daemon_files(self.layout, self.daemon, self.name)[0], ident.is_running)

    def ensure_dirs(self) -> None:
        self.layout.ensure_dirs()
        pid_path, log_path = daemon_files(self.layout, self.daemon, self.name)
        for d in (pid_path.parent, log_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(pid_path.parent, 0o700)  # a run/ directory: daemon_files keeps the files in one

    def load_settings(self, *, for_start: bool):
        if self.loader is not None:
            return self.loader(self.layout)
        from enstratus_workers.config import ensure_provisioning_file, load_settings

        if for_start:
            ensure_provisioning_file(self.layout)
        return load_settings(self.layout)


def daemon_files(layout: Layout, daemon: str, name: str) -> tuple[Path, Path]:
    """(pid file, log file) of one daemon instance. The KM service, a service of its own with its
    own init script, keeps them under ``services/km/``; every worker-service daemon under
    ``services/worker/``."""
    if daemon == "km":
        check_daemon_name(name)
        return (inside(layout.km_dir / "run", f"{daemon}@{name}.pid"),
                inside(layout.km_dir / "log", f"{daemon}@{name}.log"))
    return layout.pid_file(daemon, name), layout.log_file(daemon, name)


# --- status and stop -----------------------------------------------------------------------------

def _status(ctx: _Context) -> int:
    pf = ctx.pid_file()
    state, pid = pf.state()
    up = procs.uptime(pid) if state == RUNNING else None
    if ctx.args.json:
        print(json.dumps(procs.DaemonState(ctx.daemon, ctx.name, pid, state, up, pf.path).as_dict()))
    elif state == RUNNING:
        print(f"{ctx.label} is running (pid {pid}, up {format_uptime(up)})")
    elif state == DEAD:
        print(f"{ctx.label} is dead but its pid file {pf.path} exists (pid {pid})")
    else:
        print(f"{ctx.label} is stopped")
    return {RUNNING: errors.STATUS_RUNNING, DEAD: errors.STATUS_DEAD_WITH_PIDFILE}.get(
        state, errors.STATUS_STOPPED)


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + (f"{m}m" if d or h or m else "") + f"{s}s"


def _stop_grace(ctx: _Context) -> float:
    if ctx.args.grace is not None:
        return ctx.args.grace
    try:
        return ctx.load_settings(for_start=False).subscriber.grace_period + STOP_MARGIN
    except ConfigError as exc:  # a broken config must not keep the operator from stopping
        from enstratus_workers.config.settings import WorkerSettings

        print(f"{ctx.label}: {exc}; using the default grace period", file=sys.stderr)
        return WorkerSettings().grace_period + STOP_MARGIN


def _stop(ctx: _Context) -> int:
    """SIGTERM, wait ``--grace``, SIGTERM again (cold), wait, SIGKILL with its children (LSB: a
    stop of a stopped daemon succeeds)."""
    pf = ctx.pid_file()
    state, pid = pf.state()
    if state != RUNNING:
        if state == DEAD and pf.remove_stale() is not None:
            print(f"{ctx.label} is not running; removed stale pid file {pf.path}")
        else:
            print(f"{ctx.label} is not running")
        return errors.EXIT_OK
    grace = _stop_grace(ctx)
    outcome = procs.terminate([pid], grace, report=lambda msg: print(f"{ctx.label}: {msg}"))[pid]
    pf.release(pid)  # the daemon removes its own pid file, unless it had to be killed
    if outcome == "unkillable":
        print(f"{ctx.label} (pid {pid}) survived SIGKILL", file=sys.stderr)
        return errors.EXIT_GENERIC
    print(f"{ctx.label} stopped (pid {pid})" + ("" if outcome == "stopped" else f": {outcome}"))
    return errors.EXIT_OK


# --- start and run -------------------------------------------------------------------------------

def _start(ctx: _Context, *, foreground: bool) -> int:
    # started as root: become the service account before reading, writing or opening anything
    refused = privileges.drop_if_root(ctx.label, ctx.daemon, ctx.layout)
    if refused is not None:
        return refused
    try:
        settings = ctx.load_settings(for_start=True)
        ctx.journal = logtarget.to_journal()
    except ConfigError as exc:
        print(f"{ctx.label}: configuration error: {exc}", file=sys.stderr)
        return errors.EXIT_NOT_CONFIGURED
    except OSError as exc:
        print(f"{ctx.label}: cannot prepare the configuration: {exc}", file=sys.stderr)
        return errors.EXIT_GENERIC
    pf = ctx.pid_file()
    state, pid = pf.state()
    if state == RUNNING:
        print(f"{ctx.label} already running (pid {pid})")
        return errors.EXIT_OK if not foreground else errors.EXIT_GENERIC
    if state == DEAD:
        print(f"{ctx.label}: replacing stale pid file {pf.path} (pid {pid} is not running)")
    ctx.ensure_dirs()
    if foreground:
        return _serve(ctx, settings, _Notifier(ctx.args.ready_fd), redirect_stdio=False)
    return _spawn(ctx, settings)


def _spawn(ctx: _Context, settings) -> int:
    """Fork; the child daemonizes and serves, the parent waits for its word on the pipe."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(r)
        return _daemonize_and_serve(ctx, settings, w)
    os.close(w)
    os.waitpid(child, 0)  # python-daemon's first fork: this child exits at once
    try:
        kind, text = _await_ready(r, ctx.args.wait)
    finally:
        os.close(r)
    if kind == "ok":
        print(f"{ctx.label} started (pid {text})")
        return errors.EXIT_OK
    if kind == "running":
        print(f"{ctx.label} already running (pid {text})")
        return errors.EXIT_OK
    if kind == "timeout":
        print(f"{ctx.label} did not report ready within {ctx.args.wait:g} s; it may still be "
              f"starting; see {ctx.log_file}", file=sys.stderr)
        return errors.EXIT_GENERIC
    print(f"{ctx.label} failed to start: {text}\n  see {ctx.log_file}", file=sys.stderr)
    return errors.EXIT_NOT_CONFIGURED if kind == "config" else errors.EXIT_GENERIC


def _await_ready(fd: int, timeout: float) -> tuple[str, str]:
    """Read one line ``<kind> <text>`` from the readiness pipe; ("timeout", "") if none came."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "timeout", ""
        chunk = os.read(fd, 4096)
        if not chunk:
            return "error", "the daemon exited before it was ready"
        buf += chunk
    kind, _, text = buf.split(b"\n", 1)[0].decode("utf-8", "replace").partition(" ")
    return kind, text.replace("\\n", "\n")


def _daemonize_and_serve(ctx: _Context, settings, ready_fd: int) -> int:
    """In the forked child: become a daemon, then serve. Never returns into the caller's code
    unless this process is the daemon."""
    try:
        import daemon as python_daemon  # python-daemon

        # stdout and stderr go to the log file so that tracebacks and stray prints are kept
        # (logging to the journal: both go to stderr, the journal; a caller's stdout pipe is let go)
        log_stream = None if ctx.journal else os.fdopen(
            os.open(ctx.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640), "a", encoding="utf-8")
        # stdin explicitly /dev/null: started by another daemon (the watchdog), fd 0 may be closed
        devnull = open(os.devnull, encoding="utf-8")
        context = python_daemon.DaemonContext(
            working_directory=str(ctx.layout.home), umask=0o027, detach_process=True,
            files_preserve=[ready_fd], stdin=devnull, stdout=log_stream or sys.stderr,
            stderr=log_stream or sys.stderr,
            signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None})
        context.open()
        if log_stream is not None:
            log_stream.close()  # fds 0, 1 and 2 now hold the files
        devnull.close()
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent must hear of it
        _Notifier(ready_fd).send("error", f"could not daemonize: {exc!r}")
        os._exit(errors.EXIT_GENERIC)
    return _serve(ctx, settings, _Notifier(ready_fd), redirect_stdio=True)


class _Notifier:
    """The daemon's side of the readiness pipe: one line, then the pipe is closed."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def send(self, kind: str, text: object) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, f"{kind} {str(text).replace(chr(10), chr(92) + 'n')}\n".encode())
        except OSError:
            pass  # the waiting parent gave up (timeout) or was killed
        finally:
            os.close(fd)


def _serve(ctx: _Context, settings, notifier: _Notifier, *, redirect_stdio: bool) -> int:
    """The daemon proper: log, pid file, signals, build, run, and the way out of each."""
    os.umask(0o027)
    systemd = SystemdNotifier.from_environment()
    try:
        dlog = DaemonLog(None if ctx.journal else ctx.log_file, redirect_stdio=redirect_stdio,
                         level=ctx.args.log_level, to_stderr=not redirect_stdio and sys.stderr.isatty())
    except OSError as exc:
        print(f"{ctx.label}: cannot open the log file: {exc}", file=sys.stderr)
        notifier.send("error", f"cannot open the log file: {exc}")
        return errors.EXIT_GENERIC
    relay = _SignalRelay(dlog, systemd)
    pf = ctx.pid_file()
    try:
        try:
            stale = pf.acquire()
        except AlreadyRunning as exc:
            log.warning("%s %s", ctx.label, exc)
            notifier.send("running", exc.pid)
            return errors.EXIT_OK if redirect_stdio else errors.EXIT_GENERIC
        atexit.register(pf.release, os.getpid())
        log.info("%s starting (pid %d, home %s%s)", ctx.label, os.getpid(), ctx.layout.home,
                 f", replaced the stale pid file of pid {stale}" if stale else "")
        return _run_service(ctx, settings, notifier, relay, systemd)
    finally:
        relay.close()
        if pf.release():
            log.info("%s removed its pid file %s", ctx.label, pf.path)
        dlog.close()
        relay.restore()


def _run_service(ctx: _Context, settings, notifier: _Notifier, relay: "_SignalRelay",
                 systemd: SystemdNotifier | None = None) -> int:
    ready_called = threading.Event()

    def ready() -> None:
        if not ready_called.is_set():
            ready_called.set()
            log.info("%s ready (pid %d)", ctx.label, os.getpid())
            notifier.send("ok", os.getpid())
            if systemd is not None:
                systemd.notify("READY=1")

    try:
        service = ctx.build(settings, ctx.layout, ctx.name, ctx.args)
        relay.attach(service)
        service.run(ready)
    except ConfigError as exc:
        log.error("%s: configuration error: %s", ctx.label, exc)
        notifier.send("config", f"configuration error: {exc}")
        return errors.EXIT_NOT_CONFIGURED
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else errors.EXIT_GENERIC
        (log.info if code == 0 else log.error)("%s exited with code %s", ctx.label, code)
        notifier.send("error", f"it exited with code {code} before it was ready")
        return code
    except BaseException as exc:  # noqa: BLE001 - log every way out of run with its traceback
        log.exception("%s failed: %s", ctx.label, exc)
        notifier.send("error", f"{type(exc).__name__}: {exc}")
        return errors.EXIT_GENERIC
    if not ready_called.is_set():
        notifier.send("error", "it stopped before it was ready")
        log.warning("%s stopped before it was ready", ctx.label)
        return errors.EXIT_GENERIC
    log.info("%s stopped", ctx.label)
    return errors.EXIT_OK


class _SignalRelay:
    """Signal handlers that only set flags, and a thread that acts on them.

    SIGTERM/SIGINT: the first asks the service for a warm stop, the next ones for a cold stop
    (``Service.request_stop`` only sets flags too). SIGHUP: reopen the log file. The handler writes
    the signal number to a pipe (async-signal-safe); the watcher thread reads it, logs, and
    reopens the log, which a handler must not do (it could hold the logging lock it interrupted).
    """

    STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, dlog: DaemonLog, systemd: SystemdNotifier | None = None):
        self._dlog = dlog
        self._systemd = systemd
        self._stops = 0
        self._service: Service | None = None
        self._closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._previous = {s: signal.signal(s, self._on_signal) for s in (*self.STOP_SIGNALS, signal.SIGHUP)}
        self._thread = threading.Thread(target=self._watch, name="signal-watcher", daemon=True)
        self._thread.start()

    def _on_signal(self, signum, frame) -> None:
        if signum in self.STOP_SIGNALS:
            self._stops += 1
            if self._service is not None:
                self._service.request_stop(cold=self._stops > 1)
        if self._closed:
            return
        try:
            os.write(self._w, bytes([signum]))
        except OSError:
            pass  # pipe full: the watcher is behind, the flags are set anyway

    def attach(self, service: Service) -> None:
        """From now on stop signals go to ``service``; one that came during build is passed on."""
        self._service = service
        if self._stops:
            service.request_stop(cold=self._stops > 1)

    def _watch(self) -> None:
        stops = 0
        while True:
            data = os.read(self._r, 64)
            for signum in data:
                if signum == 0:
                    return
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: %s", self._dlog.reopen())
                    if self._service is not None:
                        self._service.request_reload()
                else:
                    stops += 1
                    if stops == 1 and self._systemd is not None:
                        self._systemd.notify("STOPPING=1")
                    log.info("received %s: %s stop", signal.Signals(signum).name,
                             "cold" if stops > 1 else "warm")
            if not data:
                return

    def close(self) -> None:
        """Stop the watcher. The handlers stay (flags only) until ``restore``."""
        self._closed = True
        os.set_blocking(self._w, True)
        os.write(self._w, b"\0")
        self._thread.join(timeout=2.0)
        os.close(self._w)
        os.close(self._r)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
