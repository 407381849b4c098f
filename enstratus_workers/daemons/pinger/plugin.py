"""``pinger check``: the service's health as a monitoring plugin, for Nagios, Icinga and friends.

It follows the Monitoring Plugins development guidelines: one line ``ENSTRATUS-WORKERS STATE -
text | perfdata`` and exit code 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; a usage error is UNKNOWN
too (argparse would exit 2, which reads as CRITICAL). ``-w``/``-c`` are ranges on each queue's
depth (ready messages), ``--lag-warning``/``--lag-critical`` on the lag (seconds the oldest
waiting job has waited); the perfdata carries them. ``-t`` bounds the whole check: the broker and
the databases are asked in a thread of their own, so one that does not answer cannot hold the
check past it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from enstratus_workers import __version__
from enstratus_workers.config import load_settings
from enstratus_workers.daemons.pinger.guest_watch import check as guest_problems
from enstratus_workers.daemons.pinger.health import COUNT, Health, check_health
from enstratus_workers.daemons.pinger.thresholds import Range, Threshold
from enstratus_workers.db import open_databases
from enstratus_workers.errors import (
    CHECK_CRITICAL,
    CHECK_UNKNOWN,
    CHECK_WARNING,
    EnstratusError,
)
from enstratus_workers.layout import Layout

PROG = "pinger check"
DEFAULT_TIMEOUT_S = 10.0   # the guidelines' usual default; each connection alone may take that long
MAX_TIMEOUT_S = 3600.0
_QUEUE_DEPTH = ("queue_", "_ready")   # the perf labels a depth threshold applies to


class _PluginParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are UNKNOWN (3), said on stdout as a plugin says things."""

    def error(self, message: str):
        health = Health()
        health.worsen(CHECK_UNKNOWN, f"{PROG}: {message}")
        self.exit(CHECK_UNKNOWN, f"{health.line()}\n{self.format_usage()}")

    def _print_message(self, message, file=None):
        super()._print_message(message, sys.stdout)  # the monitoring system reads nothing else


def _range(text: str) -> Range:
    try:
        return Range.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: seconds, above 0 and at most "
                                         f"{MAX_TIMEOUT_S:.0f}")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = _PluginParser(prog=PROG, description="Check the service's health once, as a monitoring plugin: "
                      "one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
                      epilog="RANGE as the Monitoring Plugins guidelines define it: N (outside 0..N), N: "
                             "(below N), ~:N (above N), N:M (outside N..M), @N:M (inside N..M).")
    p.add_argument("--home", default=None, help="install root (default: $ENSTRATUS_HOME or the checkout)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the line")
    p.add_argument("-w", "--warning", type=_range, metavar="RANGE",
                   help="WARNING when a queue's depth (ready messages) is outside RANGE")
    p.add_argument("-c", "--critical", type=_range, metavar="RANGE",
                   help="CRITICAL when a queue's depth (ready messages) is outside RANGE")
    p.add_argument("--lag-warning", type=_range, metavar="RANGE",
                   help="WARNING when the lag (seconds the oldest waiting job has waited) is outside RANGE")
    p.add_argument("--lag-critical", type=_range, metavar="RANGE",
                   help="CRITICAL when the lag is outside RANGE")
    p.add_argument("-t", "--timeout", type=_timeout, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"UNKNOWN when the check takes longer (default {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} (enstratus-workers) {__version__}")
    return p


def main(argv) -> int:
    """``pinger check [options]``: print one status line (or ``--json``), return the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:  # -h, -V (0) and usage errors (3), already printed
        return int(done.code or 0)
    layout = Layout.from_env() if args.home is None else Layout(Path(args.home).resolve())
    depth = Threshold(args.warning, args.critical)
    lag = Threshold(args.lag_warning, args.lag_critical)
    # The monitoring system times the whole process: loading Python and the service's modules
    # (one to two seconds here) counts against -t as well
    budget = max(0.0, args.timeout - process_age_s())
    health = within(budget, lambda: assess(layout, depth, lag), shown_s=args.timeout)
    print(json.dumps(health.as_dict()) if args.json else health.line(), flush=True)
    return health.code


def process_age_s(pid: int | str = "self") -> float:
    """Seconds since this process (or ``pid``) started (Linux ``/proc``); 0 where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()   # the name may hold blanks and ")"
        started_s = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started_s)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def within(timeout_s: float, check, *, shown_s: float | None = None) -> Health:
    """``check()``'s health, or UNKNOWN "timed out after N s" (``shown_s``, else ``timeout_s``)
    once ``timeout_s`` passed.

    A connect or query that hangs cannot be interrupted from outside, so the check runs in a
    daemon thread that is left behind when time is up; it prints nothing, and dies with the process.
    """
    done: list[Health] = []

    def run():
        try:
            done.append(check())
        except Exception as exc:  # noqa: BLE001 - a plugin prints a line with the reason, never a traceback
            first_line = (str(exc).splitlines() or [""])[0][:200]  # SQLAlchemy appends the SQL
            done.append(_unknown(f"cannot check: {type(exc).__name__}: {first_line}"))

    worker = threading.Thread(target=run, name="pinger-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if done:
        return done[0]
    limit = timeout_s if shown_s is None else shown_s
    shown = f"{limit:.0f}" if float(limit).is_integer() else f"{limit:g}"
    return _unknown(f"timed out after {shown} s")


def assess(layout: Layout, depth: Threshold, lag: Threshold) -> Health:
    """The health of the install at ``layout``, with the pinger's own liveness, the guests, and
    the thresholds applied."""
    try:
        settings = load_settings(layout)
        health = check_health(settings, layout)
    except EnstratusError as exc:
        return _unknown(f"cannot check: {exc}")
    try:
        dbs = open_databases(settings.worker, layout, ensure=False)
        try:
            # Is the pinger itself alive and beating on time? Are the guests answering?
            beats = [b for b in dbs.heartbeats.all() if b.daemon == "pinger"]
            if health.code == 0 and not beats:
                health.worsen(CHECK_WARNING, "no pinger heartbeat recorded")
            elif beats and all(b.expired for b in beats):
                health.worsen(CHECK_CRITICAL, "pinger heartbeat expired")
            for code, text in guest_problems(settings, layout, dbs):
                health.worsen(code, text)
        finally:
            dbs.close()
    except Exception as exc:  # noqa: BLE001 - whatever stops the read, the check says so
        health.worsen(CHECK_CRITICAL, f"cannot read heartbeats: {type(exc).__name__}")
    apply_thresholds(health, depth, lag)
    return health


def apply_thresholds(health: Health, depth: Threshold, lag: Threshold) -> None:
    """Worsen ``health`` for each queue depth and the lag past their ranges, and put the ranges
    into those values' perfdata."""
    start, end = _QUEUE_DEPTH
    for label, value in list(health.perf.items()):
        if label.startswith(start) and label.endswith(end) and depth:
            _judge(health, label, value, depth, f"queue {label[len(start):-len(end)]} depth {value}")
        elif label == "lag" and lag:
            _judge(health, label, value, lag, f"lag {value} s")


def _judge(health: Health, label: str, value, threshold: Threshold, what: str) -> None:
    # min 0 with the thresholds: a depth or a lag is never negative, and a grapher scales by it
    health.perf_specs[label] = replace(health.perf_specs.get(label, COUNT), min="0",
                                       warn=threshold.warning.text if threshold.warning else "",
                                       crit=threshold.critical.text if threshold.critical else "")
    code, hit = threshold.verdict(value)
    if hit is not None:
        level = "critical" if code == CHECK_CRITICAL else "warning"
        health.worsen(code, f"{what} ({level}: {hit.describe()})")


def _unknown(problem: str) -> Health:
    health = Health()
    health.worsen(CHECK_UNKNOWN, problem)
    return health
