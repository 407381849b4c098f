"""Reopening a log file after rotation, and pointing the standard streams at the new file.

logrotate renames a daemon's log file and sends SIGHUP. A daemon holds the file open twice: in
its logging handler, and as file descriptors 1 and 2 (a daemonized one gets them from
python-daemon, a worker process from the subscriber that spawned it), where a crash traceback or
a stray print goes. Reopening only the handler would leave fds 1 and 2 on the renamed file, so
the last words of a crash would land in last week's log, or in a compressed file's ghost.

Which of fds 1 and 2 follow the log is decided once, when the log is first opened: those that
are the same file (device and inode) as the log at that moment. A daemon run in the foreground
on a terminal, or under systemd with its stderr on the journal, keeps its streams where they are.

The new file is opened before the old one is closed: a reopen that fails (a full disk, a
directory made read-only) leaves the daemon writing to the old file, and says so, rather than
leaving it with no log at all.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

STDIO_FDS = (1, 2)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def fds_on_file(path: Path, fds: Iterable[int] = STDIO_FDS) -> tuple[int, ...]:
    """The ones among ``fds`` that are open on the file at ``path`` (same device and inode).

    A closed fd, or a path that does not exist, matches nothing.
    """
    try:
        target = _identity(os.stat(path))
    except OSError:
        return ()
    found = []
    for fd in fds:
        try:
            if _identity(os.fstat(fd)) == target:
                found.append(fd)
        except OSError:
            continue  # closed
    return tuple(found)


def repoint(fds: Iterable[int], to_fd: int) -> None:
    """Make each of ``fds`` a duplicate of ``to_fd`` (``os.dup2``), after flushing what Python
    still buffers for ``sys.stdout``/``sys.stderr``, so nothing written before the call moves."""
    fds = tuple(fds)
    if not fds:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() in fds:
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or fd-less stream: nothing buffered that can still be written
    for fd in fds:
        os.dup2(to_fd, fd)


def reopen_stream(old: IO | None, open_new: Callable[[], IO], follow_fds: Iterable[int]) -> IO:
    """Open the new stream, point ``follow_fds`` at it, then close ``old``; returns the stream
    now in use. If the new one cannot be opened, ``old`` is kept (and returned) and the error
    logged: the daemon writes on to the renamed file instead of writing nowhere."""
    try:
        new = open_new()
    except OSError as exc:
        log.error("cannot reopen the log file (%s); still writing to the old one", exc)
        if old is None:
            raise
        return old
    repoint(follow_fds, new.fileno())
    if old is not None:
        try:
            old.close()
        except OSError as exc:  # a write error of the last flush: the record was already lost
            log.warning("closing the old log file failed: %s", exc)
    return new


def reopen_handler(handler: logging.FileHandler, follow_fds: Iterable[int]) -> None:
    """Reopen ``handler``'s file at its path (after a rename) and point ``follow_fds`` at it,
    under the handler's lock so no record is split between the old file and the new one."""
    handler.acquire()
    try:
        handler.stream = reopen_stream(handler.stream, handler._open, follow_fds)
    finally:
        handler.release()
