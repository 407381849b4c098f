"""Watching the service: the ``Stat`` API (figures per cluster) and the terminal monitor.

``Stat`` is importable without a terminal; the curses monitor is loaded only when it runs, so a
metrics endpoint or a status page that needs ``Stat`` never pulls in curses.
"""

from __future__ import annotations

from .stat import DEAD, DEGRADED, RUNNING, STOPPED, WORKER_STATES, Stat, TransportDepths, cluster_id_of

__all__ = ["Stat", "TransportDepths", "cluster_id_of", "run_monitor",
           "RUNNING", "DEGRADED", "DEAD", "STOPPED", "WORKER_STATES"]


def run_monitor(settings, layout, refresh: float = 1.0, **options) -> int:
    """Run the terminal monitor until ``q``; see ``enstratus_workers.monitor.tui.run_monitor``."""
    from .tui import run_monitor as run

    return run(settings, layout, refresh, **options)
