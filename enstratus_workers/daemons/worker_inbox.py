"""A worker process's inbox: the frames its subscriber sends, and the cancels among them.

The worker's main thread runs one action at a time, so frames that arrive meanwhile wait in the
socket. Most can wait (more tasks, a stop); a cancel cannot. The subscriber writes a cancel
frame naming the attempt (``{"t": "cancel", "job", "attempt"}``), then sends SIGUSR1. The
handler only sets a flag; ``cancelled(key)``, which the action calls through its context as
often as it likes, costs a set lookup and that flag's test until the flag is up, and only then
reads what is in the socket: cancels are noted, other frames kept in order for the main loop.

Because the frame names its attempt, a signal that comes late (the attempt it was meant for
ended just before) finds a cancel for that attempt, never for the next one: it cannot cancel
the worker's next job.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from enstratus_workers.daemons.subscriber import worker_socket

log = logging.getLogger(__name__)

#: cancels kept for attempts this worker has not run (it may never be handed them): a bound
KEEP_CANCELS = 1000


class Inbox:
    def __init__(self, conn):
        self.conn = conn
        self.signalled = False                 # SIGUSR1: a cancel frame is waiting in the socket
        self._frames: deque = deque()          # read while an action ran: for the main loop
        self._cancelled: set[tuple[int, int]] = set()
        self._lock = threading.Lock()          # an action may ask from threads of its own

    def on_signal(self, signum, frame) -> None:
        """The SIGUSR1 handler: a flag, nothing more."""
        self.signalled = True

    def next(self, timeout: float) -> dict | None:
        """The next frame that is not a cancel (those are noted), or None after ``timeout``.
        Raises EOFError or OSError when the subscriber is gone."""
        with self._lock:
            if self._frames:
                return self._frames.popleft()
            if not self.conn.poll(timeout):
                return None
            frame = worker_socket.unpack(self.conn.recv_bytes())
            return None if self._noted(frame) else frame

    def cancelled(self, key: tuple[int, int]) -> bool:
        """Whether the attempt ``key`` (job id, attempt) was cancelled."""
        if key in self._cancelled:
            return True
        if not self.signalled:
            return False
        with self._lock:
            self.signalled = False   # before reading: a signal during the read raises it again
            try:
                while self.conn.poll(0):
                    frame = worker_socket.unpack(self.conn.recv_bytes())
                    if not self._noted(frame):
                        self._frames.append(frame)
            except (EOFError, OSError, ValueError):
                pass   # the main loop finds the socket closed when it next reads
        return key in self._cancelled

    def done(self, key: tuple[int, int]) -> None:
        """The attempt ended: forget its cancel."""
        self._cancelled.discard(key)

    def _noted(self, frame: dict) -> bool:
        if frame.get("t") != "cancel":
            return False
        try:
            key = (int(frame["job"]), int(frame["attempt"]))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a cancel frame without its job and attempt")
            return True
        if len(self._cancelled) >= KEEP_CANCELS:
            self._cancelled.clear()
        self._cancelled.add(key)
        log.info("job %s attempt %s cancelled", *key)
        return True
