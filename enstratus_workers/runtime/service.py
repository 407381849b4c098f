"""The contract between the daemon runner (pid file, daemonizing, signals, logs) and a daemon.

A daemon module builds a ``Service``; ``enstratus_workers.runtime.runner`` does the rest.
"""

from __future__ import annotations

import abc
from typing import Callable


class Service(abc.ABC):
    """One daemon's main loop.

    The runner calls ``run`` in the main thread after daemonizing, writing the pid file and
    setting up logging. Signal handlers call ``request_stop``, which only sets flags: the loop
    notices them and shuts down in the order it documents.
    """

    #: the daemon's kind: "publisher", "subscriber", "pinger", "worker", "km"
    daemon: str = ""

    @abc.abstractmethod
    def run(self, ready: Callable[[], None]) -> None:
        """Run until stopped. Call ``ready()`` once initialized (the runner's ``start`` waits for it)."""

    def request_reload(self) -> None:
        """SIGHUP (after the log file is reopened): re-read what can change while running.

        Called from the runner's signal-watcher thread; set a flag for the main loop. Default: nothing.
        """

    @abc.abstractmethod
    def request_stop(self, cold: bool = False) -> None:
        """Warm stop (finish running work up to the grace period) or cold stop (give work back now).

        Called from a signal handler: must only set flags.
        """
