"""The terminal monitor: the fleet's hosts and a live table of every cluster's worker
processes, in curses (``enstratus-workers monitor``; ``--json`` prints one ``Snapshot``).

The figures come from ``Stat`` (heartbeat rows), ``JobStore.counts`` and the transport's
``depths``, fetched by a background thread every ``refresh`` seconds: a database that hangs (a
MySQL connect timing out) then freezes only the figures, never the keyboard or a resize. Errors
are shown in the footer and the monitor keeps going, so it can watch a database come back.
Rendering (``render``) is a pure function of a ``Snapshot`` and the screen size.
"""

from __future__ import annotations

import argparse
import curses
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..db import open_databases
from ..errors import EXIT_NOT_CONFIGURED, ConfigError
from ..layout import Layout
from ..fleet.hosts import fleet_view
from ..fleet.hosts_text import host_line
from .stat import DEAD, DEGRADED, RUNNING, Stat, TransportDepths

log = logging.getLogger(__name__)

#: (title, width, right-aligned) of the per-worker table; Host's width follows the host names
COLUMNS = (("Host", 0, False), ("Id", 14, False), ("Pid", 8, True), ("State", 9, False),
           ("Pool", 12, False), ("TQ", 5, True), ("RQ", 5, True), ("RC", 4, True),
           ("Done", 8, True), ("Up", 9, True))
_KEY_WAIT_MS = 100  # how often the UI looks at the keyboard and for new figures
_HOST_STYLE = {"alive": RUNNING, "dead": DEAD}   # a host line is drawn as a cluster line of that state


@dataclass
class Snapshot:
    """Everything one screen shows, fetched at ``taken`` (epoch seconds); ``None`` where it failed."""

    taken: float
    clusters: list[Stat] = field(default_factory=list)
    job_counts: dict[str, int] | None = None
    depths: list | None = None
    errors: list[str] = field(default_factory=list)
    hosts: list = field(default_factory=list)     # fleet.hosts.HostView: every host of the fleet

    def as_dict(self) -> dict:
        """The figures as ``monitor --json`` prints them."""
        return {"taken": self.taken, "hosts": [h.as_dict() for h in self.hosts],
                "clusters": [c.as_dict() for c in self.clusters], "jobs": self.job_counts,
                "queues": None if self.depths is None else [dataclasses.asdict(d) for d in self.depths],
                "errors": self.errors}


def human_duration(seconds: float) -> str:
    """``45s``, ``12m03s``, ``3h04m``, ``2d03h``: the two largest units, as ``top`` shows uptime."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text[:160]}"


# -- fetching ----------------------------------------------------------------------------------
class Fetcher:
    """Takes a ``Snapshot`` every ``refresh`` seconds in a daemon thread; ``latest`` is the newest.

    The databases are opened once (lazily, and again after a failure to open them); the engines
    reconnect by themselves when a database comes back.
    """

    def __init__(self, settings, layout, refresh: float, *, dbs=None, depths=None):
        self.settings, self.layout, self.refresh = settings, layout, refresh
        self._dbs, self._own_dbs = dbs, dbs is None
        self._depths = depths if depths is not None else TransportDepths(settings, layout, client_name="monitor")
        self._own_depths = depths is None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._thread = threading.Thread(target=self._run, name="monitor-fetch", daemon=True)

    @property
    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._latest

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2.0)
        if self._thread.is_alive():  # stuck in a connect: the process exit ends it
            return
        if self._own_depths:
            self._depths.close()
        if self._own_dbs and self._dbs is not None:
            self._dbs.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = self.fetch()
            with self._lock:
                self._latest = snap
            self._stop.wait(self.refresh)

    def fetch(self) -> Snapshot:
        snap = Snapshot(taken=time.time())
        try:
            if self._dbs is None:
                self._dbs = open_databases(self.settings.worker, self.layout, ensure=False)
            snap.clusters = Stat.get_all(self.settings, self.layout, dbs=self._dbs, depths=self._depths)
            snap.hosts = fleet_view(self._dbs)
            snap.job_counts = self._dbs.jobs.counts()
        except Exception as exc:  # show any failure and keep watching
            log.debug("reading the provisioning DB failed", exc_info=True)
            snap.errors.append(f"provisioning DB: {_describe(exc)}")
        try:
            fallback = self.settings.worker.all_queues
            queues = self._dbs.desired.queues(fallback) if self._dbs is not None else fallback
            snap.depths = self._depths(queues)
        except Exception as exc:
            log.debug("reading queue depths failed", exc_info=True)
            snap.errors.append(f"queue ({self.settings.mq.transport}): {_describe(exc)}")
        return snap


# -- rendering ---------------------------------------------------------------------------------
def _cells(values, widths) -> str:
    out = []
    for (title, _w, right), width, value in zip(COLUMNS, widths, values):
        text = str(value)[:width]
        out.append(text.rjust(width) if right else text.ljust(width))
    return " ".join(out).rstrip()


def _cluster_line(stat: Stat) -> tuple[str, str]:
    status = stat.status
    by_state = stat.workers_by_state()
    states = ", ".join(f"{k} {v}" for k, v in by_state.items() if v)
    st = stat.stats
    if status == DEAD:
        life = f"silent {human_duration(stat.silent_for())}"
    else:
        life = f"up {human_duration(stat.uptime())}"
    text = (f"> {stat.cluster_id}  {status.upper()}  pid {stat.pid}  "
            f"workers {len(stat.worker_details)} ({states or 'none'})  "
            f"TQ {stat.task_q_size}  RQ {stat.done_q_size}  RC {stat.reincarnations}  "
            f"received {st.get('received', 0)} succeeded {st.get('succeeded', 0)} failed {st.get('failed', 0)}  "
            f"{life}" + ("" if stat.connected or status == DEAD else "  queue disconnected"))
    return text, status


def _optional(depth, name: str) -> str:
    value = getattr(depth, name, None)  # None where the broker does not say
    return "" if value is None else f" {name} {value}"


def _footer(snap: Snapshot, refresh: float) -> list[tuple[str, str]]:
    lines = []
    if snap.job_counts is not None:
        lines.append(("jobs  " + "  ".join(f"{k} {v}" for k, v in snap.job_counts.items()), "footer"))
    else:
        lines.append(("jobs  (unavailable)", "footer"))
    if snap.depths is not None:
        parts = [f"{d.queue}: ready {d.ready}" + _optional(d, "unacked") + _optional(d, "delayed")
                 + f" dead {d.dead}" for d in snap.depths]
        lines.append(("queues  " + (" | ".join(parts) or "(none configured)"), "footer"))
    else:
        lines.append(("queues  (unavailable)", "footer"))
    for error in snap.errors:
        lines.append((f"error: {error}", "error"))
    updated = datetime.fromtimestamp(snap.taken).strftime("%H:%M:%S")
    lines.append((f"updated {updated}  refresh {refresh:g}s  q quit", "footer"))
    return lines


def render(snap: Snapshot | None, width: int, height: int, *, refresh: float = 1.0,
           title: str = "enstratus-workers monitor") -> list[tuple[str, str]]:
    """The screen as ``(text, style)`` lines, each at most ``width - 1`` characters, at most ``height``.

    Styles: ``title``, ``header``, ``running``/``degraded``/``dead``/``stopped`` (a cluster line),
    ``row``, ``footer``, ``error``. The footer stays at the bottom; rows that do not fit are
    counted in a last body line.
    """
    if width < 2 or height < 1:
        return []
    hosts = [s.host for s in snap.clusters] if snap else []
    widths = [w or max(4, min(24, max(map(len, hosts), default=4))) for _t, w, _r in COLUMNS]
    head = [(f"{title}  clusters {len(snap.clusters) if snap else '-'}", "title"),
            (_cells([t for t, _w, _r in COLUMNS], widths), "header")]
    if snap is None:
        body, foot = [("waiting for the first figures...", "row")], []
    else:
        now = int(snap.taken * 1000)
        body = [(host_line(h, now), _HOST_STYLE.get(h.state, "stopped")) for h in snap.hosts]
        for stat in snap.clusters:
            body.append(_cluster_line(stat))
            for w in stat.worker_details:
                body.append((_cells([stat.host, w.get("name", "?"), w.get("pid") or "-",
                                     str(w.get("state", "?")).capitalize(), w.get("type", "?"),
                                     w.get("inflight", 0), "-", w.get("reincarnations", 0),
                                     w.get("tasks_done", 0), human_duration(w.get("uptime_s") or 0)],
                                    widths), "row"))
        if not snap.clusters and not snap.errors:
            body.append(("no subscriber has written a heartbeat (is the service running?)", "row"))
        foot = _footer(snap, refresh)
    room = height - len(head) - len(foot)
    if room < 1:  # a tiny terminal: the errors and the header matter most
        lines = (head + foot)[:height]
    else:
        if len(body) > room:
            hidden = len(body) - (room - 1)
            body = body[:room - 1] + [(f"... {hidden} more lines (enlarge the terminal)", "row")]
        lines = head + body + [("", "row")] * (room - len(body)) + foot
    return [(text[:width - 1], style) for text, style in lines]


# -- the screen --------------------------------------------------------------------------------
def _styles() -> dict[str, int]:
    styles = {"title": curses.A_BOLD | curses.A_REVERSE, "header": curses.A_BOLD | curses.A_UNDERLINE,
              "row": curses.A_NORMAL, "footer": curses.A_NORMAL, "error": curses.A_BOLD,
              RUNNING: curses.A_BOLD, DEGRADED: curses.A_BOLD, DEAD: curses.A_BOLD, "stopped": curses.A_DIM}
    if curses.has_colors():
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for pair, (style, color) in enumerate(((RUNNING, curses.COLOR_GREEN), (DEGRADED, curses.COLOR_YELLOW),
                                               (DEAD, curses.COLOR_RED), ("error", curses.COLOR_RED)), start=1):
            curses.init_pair(pair, color, background)
            styles[style] |= curses.color_pair(pair)
    return styles


def _draw(screen, snap: Snapshot | None, refresh: float, styles: dict[str, int], title: str) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, (text, style) in enumerate(render(snap, width, height, refresh=refresh, title=title)):
        try:
            screen.addstr(y, 0, text, styles.get(style, curses.A_NORMAL))
        except curses.error:  # the terminal shrank between getmaxyx and here: the next draw fixes it
            pass
    screen.noutrefresh()
    curses.doupdate()


def _loop(screen, fetcher: Fetcher, refresh: float, title: str) -> int:
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    screen.timeout(_KEY_WAIT_MS)
    styles = _styles()
    drawn, dirty = None, True
    while True:
        snap = fetcher.latest
        if dirty or snap is not drawn:
            _draw(screen, snap, refresh, styles, title)
            drawn, dirty = snap, False
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return 0
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            dirty = True
        elif key in (ord("r"), 12):  # r or ^L: redraw from scratch
            screen.clear()
            dirty = True


def fetch_once(settings, layout) -> Snapshot:
    """One ``Snapshot``, its databases and transport closed after (``monitor --json``)."""
    fetcher = Fetcher(settings, layout, 1.0)
    try:
        return fetcher.fetch()
    finally:
        fetcher.stop()


def run_monitor(settings, layout, refresh: float = 1.0, *, dbs=None, depths=None) -> int:
    """Show the monitor in this terminal until ``q`` (exit 0); Ctrl-C exits 130.

    ``dbs`` and ``depths`` (a ``depths(queues)`` callable) replace the databases and transport
    opened from ``settings``; the caller then keeps them and closes them itself.
    """
    fetcher = Fetcher(settings, layout, max(0.1, refresh), dbs=dbs, depths=depths)
    fetcher.start()
    # The terminal's own size, never LINES/COLUMNS from the environment: ncurses takes those
    # over the window's size, so an exported or stale COLUMNS (pytest-xdist sets 80x24) would
    # pin the table to it through every resize. (use_env(False) is no cure: it takes
    # terminfo's fixed 80 columns instead.)
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    try:
        return curses.wrapper(_loop, fetcher, max(0.1, refresh), f"enstratus-workers monitor  {layout.home}")
    except KeyboardInterrupt:
        return 130
    finally:
        fetcher.stop()


def main(argv=None) -> int:
    """``python -m enstratus_workers.monitor``: until the CLI's ``monitor`` command calls ``run_monitor``."""
    from ..config import load_settings

    p = argparse.ArgumentParser(prog="enstratus_workers.monitor", description="the terminal monitor")
    p.add_argument("--home", help="install root (default: $ENSTRATUS_HOME or the checkout)")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between updates (default 1)")
    p.add_argument("--log", help="write this tool's log here (the screen has no room for it)")
    args = p.parse_args(argv)
    root = logging.getLogger()
    root.addHandler(logging.FileHandler(args.log) if args.log else logging.NullHandler())
    if args.log:
        root.setLevel(logging.DEBUG)
    layout = Layout(Path(args.home).resolve()) if args.home else Layout.from_env()
    try:
        settings = load_settings(layout)
    except ConfigError as exc:
        print(f"enstratus-workers monitor: configuration error: {exc}")
        return EXIT_NOT_CONFIGURED
    try:
        return run_monitor(settings, layout, args.refresh)
    except curses.error as exc:  # no terminal (output redirected, TERM unknown)
        print(f"enstratus-workers monitor: needs a terminal: {exc}")
        return 1
