"""Pid files: written atomically by the daemon itself, never blindly overwritten, removed only by their owner.

The file holds the pid on its first line (what LSB ``pidofproc`` and ``start-stop-daemon`` read).
A file whose pid is not alive, or is alive but is not our daemon (the pid was reused), is stale.
Checking and replacing happen under an ``flock`` on the run directory, so two daemons started at
the same moment cannot both decide the file is stale and both take it; readers need no lock,
since a new file appears by ``rename`` and is never seen half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

from enstratus_workers.errors import DaemonError

log = logging.getLogger(__name__)

RUNNING = "running"
DEAD = "dead"        # the file exists, its process does not (or is someone else's)
STOPPED = "stopped"  # no file


class AlreadyRunning(DaemonError):
    """The pid file names a live process of this daemon."""

    def __init__(self, path: Path, pid: int):
        super().__init__(f"already running (pid {pid}, pid file {path})")
        self.path, self.pid = path, pid


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class PidFile:
    """One daemon instance's pid file.

    ``is_running(pid)`` decides whether a pid is alive *and* ours (see ``procs.Identity``); it is
    passed in so this module stays about files.
    """

    def __init__(self, path: Path, is_running: Callable[[int], bool]):
        self.path = Path(path)
        self._is_running = is_running

    def read(self) -> int | None:
        """The pid in the file; None when there is no file or it holds no pid."""
        try:
            first = self.path.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read pid file %s: %s", self.path, exc)
            return None
        return int(first) if first.isdigit() and int(first) > 0 else None

    def state(self) -> tuple[str, int | None]:
        """(RUNNING | DEAD | STOPPED, pid)."""
        if not self.path.exists():
            return STOPPED, None
        pid = self.read()
        if pid is not None and self._is_running(pid):
            return RUNNING, pid
        return DEAD, pid

    def acquire(self, pid: int | None = None) -> int | None:
        """Write ``pid`` (default: this process) into the file, replacing a stale one.

        Raises ``AlreadyRunning`` when the file names another live process of ours. Returns the
        pid of the stale file it replaced (0 if that file held no pid), or None if there was none.
        """
        pid = os.getpid() if pid is None else pid
        with _locked(self.path.parent):
            stale = None
            old = self.read()
            if self.path.exists() and old != pid:
                if old is not None and self._is_running(old):
                    raise AlreadyRunning(self.path, old)
                stale = old or 0
                log.warning("replacing stale pid file %s (pid %s is not running)", self.path, old)
            self._write(pid)
        return stale

    def _write(self, pid: int) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{pid}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by an earlier process with the same pid, which is gone
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def release(self, pid: int | None = None) -> bool:
        """Remove the file if it still holds ``pid`` (default: this process). True if removed.

        A daemon that lost its file to a successor (after being taken for dead) must not remove
        the successor's.
        """
        pid = os.getpid() if pid is None else pid
        if not self.path.parent.is_dir():
            return False
        with _locked(self.path.parent):
            if self.read() != pid:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
                return True
        return False

    def remove_stale(self) -> int | None:
        """Remove the file if it is stale; returns its pid (0 if none in it), or None if not removed."""
        if not self.path.parent.is_dir():
            return None
        with _locked(self.path.parent):
            if not self.path.exists():
                return None
            pid = self.read()
            if pid is not None and self._is_running(pid):
                return None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return pid or 0
