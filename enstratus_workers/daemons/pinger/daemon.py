"""The pinger: checks the service's own health on an interval and records it as a heartbeat.

``services/worker/bin/pinger check`` runs the same checks once and prints one line with a
monitoring-plugin exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), for Nagios and friends
(``plugin.py``: thresholds, timeout, version).
Heartbeats of guest VMs (the agent port) are a later addition to this same daemon.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from enstratus_workers.clock import now_ms
from enstratus_workers.daemons.pinger.guest_watch import SUMMARY_KEY, GuestWatch
from enstratus_workers.daemons.pinger.health import check_health
from enstratus_workers.daemons.pinger.retention_round import RetentionRound
from enstratus_workers.daemons.pinger.watchdog import Watchdog
from enstratus_workers.db import open_databases
from enstratus_workers.fleet.hosts import forget_expired
from enstratus_workers.fleet.joining import join_fleet
from enstratus_workers.errors import CHECK_CRITICAL
from enstratus_workers.mq.shared import held_by_daemon
from enstratus_workers.runtime import runner
from enstratus_workers.runtime.procs import daemon_states
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)


class Pinger(Service):
    daemon = "pinger"

    def __init__(self, settings, layout, name: str, watchdog: bool = True):
        self.settings, self.layout, self.name = settings, layout, name
        self.watchdog_enabled = watchdog
        self._stop = threading.Event()
        self.registry = None   # db/hosts.py, once run() joined the fleet
        # the queue connections of the health rounds (health._check_mq) and of retention's purges,
        # held from round to round (closed if the rounds come less often than AMQP heartbeats);
        # opened by the first that needs them
        self.broker = held_by_daemon(settings, layout, "health-check")
        self.started_ms = now_ms()

    def request_stop(self, cold: bool = False) -> None:
        self._stop.set()

    def run(self, ready) -> None:
        """Rounds on their own clocks: the service's health (and the watchdog) every
        ``pinger.heartbeat_interval``, the guests' heartbeats every ``pinger.guest_interval``,
        and retention's batches (``retention_round``: its own pace; off when all keep forever)."""
        p = self.settings.pinger
        dbs = open_databases(self.settings.worker, self.layout)
        try:
            self.registry = join_fleet(self.settings, dbs)
        except BaseException:
            dbs.close()
            raise
        watchdog = Watchdog(self.layout, self.settings.worker.host_name, enabled=self.watchdog_enabled)
        guests = GuestWatch(self.settings, self.layout, dbs, self.name)
        retention = RetentionRound(self.settings, dbs, self.name, self.layout, broker=self.broker)
        ready()
        self._last_state = None
        next_health = next_guests = next_prune = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_guests:
                    next_guests = now + p.guest_interval
                    try:
                        guests.beat_round()
                    except Exception:
                        log.exception("guest heartbeat round failed")
                if now >= next_health:
                    next_health = now + p.heartbeat_interval
                    self._health_round(dbs, watchdog, guests)
                if next_prune is not None and now >= next_prune:
                    wait = retention.turn()
                    next_prune = None if wait is None else time.monotonic() + wait
                wake = min(t for t in (next_health, next_guests, next_prune) if t is not None)
                self._stop.wait(max(0.0, wake - time.monotonic()))
        finally:
            self.broker.close()
            retention.close()
            try:
                dbs.heartbeats.remove("pinger", self.name)
            except Exception:
                pass
            guests.close()
            dbs.close()

    def _health_round(self, dbs, watchdog: Watchdog, guests: GuestWatch) -> None:
        try:
            # the pid files read once for both (with psutil, 6.6 ms a read here), unless the
            # watchdog restarted something: then the health reads them again, as they are now
            states = daemon_states(self.layout)
            restarted = watchdog.check(states)
            for line in restarted:
                log.warning("watchdog: %s", line)
            health = check_health(self.settings, self.layout, dbs, states=None if restarted else states,
                                  broker=self.broker)
            for key in watchdog.given_up:
                health.worsen(CHECK_CRITICAL, f"{key} keeps dying; the watchdog gave up")
            if health.state != self._last_state:
                (log.info if health.state == "OK" else log.warning)("%s", health.line())
                self._last_state = health.state
            if self.registry is not None:
                self.registry.touch(self.settings.worker.host_name)   # the host's last sighting
            forget_expired(dbs.provisioning)   # hosts dead for a day leave the views
            dbs.heartbeats.beat("pinger", self.name, ttl_s=self.settings.pinger.heartbeat_interval * 3,
                                started_ms=self.started_ms,
                                status="ok" if health.code == 0 else health.state.lower(),
                                details={**health.as_dict(), "watchdog": watchdog.snapshot(),
                                         SUMMARY_KEY: guests.last_summary})
        except Exception:
            log.exception("health check round failed")


def add_arguments(parser) -> None:
    parser.add_argument("--no-watchdog", action="store_true",
                        help="do not restart dead daemons (when systemd or another supervisor does)")


def build(settings, layout, name, options) -> Pinger:
    return Pinger(settings, layout, name, watchdog=not getattr(options, "no_watchdog", False))


def check(argv) -> int:
    """``pinger check [options]``: one status line, a monitoring-plugin exit code (``plugin.main``)."""
    from enstratus_workers.daemons.pinger import plugin

    return plugin.main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        return check(argv[1:])
    return runner.main("pinger", build, argv, add_arguments=add_arguments)
