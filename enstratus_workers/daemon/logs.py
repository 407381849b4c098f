"""A daemon's log file: one per daemon instance, reopened on SIGHUP so logrotate can move it away.

The runner makes one ``DaemonLog`` in the daemon process. ``reopen`` is called from the runner's
signal-watcher thread (never from the signal handler itself), under the handler's lock so no
record is written half to the old file and half to the new one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that can be told to reopen its file (after the file was renamed by rotation).

    With ``redirect_stdio`` the new file also replaces file descriptors 1 and 2, which a daemon
    has pointed at its log so that tracebacks and stray prints land there too.
    """

    def __init__(self, path: Path, redirect_stdio: bool = False):
        super().__init__(path, mode="a", encoding="utf-8", delay=False)
        self.redirect_stdio = redirect_stdio

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            if self.redirect_stdio:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                    os.dup2(self.stream.fileno(), stream.fileno())
        finally:
            self.release()


class DaemonLog:
    """The handlers one daemon added to the root logger, so they can be reopened and removed."""

    def __init__(self, path: Path, *, to_stderr: bool, redirect_stdio: bool, level: str = "INFO"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        formatter = logging.Formatter(FORMAT)
        self.file_handler = ReopeningFileHandler(path, redirect_stdio=redirect_stdio)
        self.handlers: list[logging.Handler] = [self.file_handler]
        if to_stderr:
            self.handlers.append(logging.StreamHandler(sys.stderr))
        root = logging.getLogger()
        root.setLevel(level)
        # pika narrates every connection step at INFO; its warnings and errors are what matter
        logging.getLogger("pika").setLevel(max(root.getEffectiveLevel(), logging.WARNING))
        for h in self.handlers:
            h.setFormatter(formatter)
            root.addHandler(h)
        # uncaught exceptions of threads go to the log with their traceback, not just to stderr
        threading.excepthook = _log_thread_exception

    def reopen(self) -> None:
        self.file_handler.reopen()

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        threading.excepthook = threading.__excepthook__


def _log_thread_exception(args) -> None:
    if args.exc_type is SystemExit:
        return
    log.error("uncaught exception in thread %s", args.thread.name if args.thread else "?",
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
