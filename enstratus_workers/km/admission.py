"""Which connections the KM keeps: room for clients that hold the key, whatever a flood does.

A connection is *pending* from accept until its first frame has arrived whole (which must happen
within ``first_frame_timeout``), *checking* while that frame is authenticated, and
*authenticated* once it was a valid sealed request. Nobody without the key gets past checking,
so the caps are on pending and checking connections:

- at most ``max_unauthenticated`` of them at once (half of ``max_connections``): the other half
  is always there for clients that hold the key;
- at most ``per_address`` of them from one client address.

A newcomer over a cap does not wait for a slot: it takes the slot of the **oldest pending**
connection (of its own address when that address is over its cap, else of the address holding
most), which is closed with "busy". A real client sends its request the moment it connects, so
it is pending for a millisecond and never the oldest for long; idle connections, however many,
only ever evict each other. Only when every slot is checking or authenticated is a newcomer
itself told "busy" (the client retries that briefly).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

PENDING, CHECKING, AUTHENTICATED = "pending", "checking", "authenticated"
UNAUTHENTICATED_SHARE = 0.5     # of max_connections; the rest is kept for key holders


class Busy(Exception):
    """No slot for a new connection: every one is checking or authenticated."""


@dataclass(eq=False)
class Slot:
    """One accepted connection, as admission sees it."""

    sock: socket.socket
    host: str
    peer: str
    accepted: float = field(default_factory=time.monotonic)
    state: str = PENDING
    tls: bool = False   # a TLS connection: nothing may be written to it in clear


class Admission:
    """The caps of the module docstring; thread-safe, O(connections) per call (a few dozen)."""

    def __init__(self, max_connections: int, per_address: int):
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, int(max_connections * UNAUTHENTICATED_SHARE))
        self.per_address = max(1, min(per_address, self.max_unauthenticated))
        self._slots: list[Slot] = []
        self._lock = threading.Lock()

    def counts(self) -> Counter:
        with self._lock:
            return Counter(s.state for s in self._slots)

    def admit(self, slot: Slot) -> Slot | None:
        """Take ``slot`` in; return the pending slot it displaced (to be closed) or ``None``.

        Raises ``Busy`` when no slot can be had.
        """
        with self._lock:
            unauthenticated = [s for s in self._slots if s.state != AUTHENTICATED]
            here = [s for s in unauthenticated if s.host == slot.host]
            if len(here) >= self.per_address:
                victim = _oldest_pending(here)
            elif len(unauthenticated) >= self.max_unauthenticated or len(self._slots) >= self.max_connections:
                per_host = Counter(s.host for s in unauthenticated)
                pending = [s for s in unauthenticated if s.state == PENDING]
                busiest = max((s.host for s in pending), key=per_host.__getitem__, default=None)
                victim = _oldest_pending([s for s in pending if s.host == busiest])
            else:
                self._slots.append(slot)
                return None
            if victim is None:
                raise Busy(f"{len(self._slots)} connections open, none of them idle")
            self._slots.remove(victim)
            self._slots.append(slot)
            return victim

    def claim(self, slot: Slot) -> bool:
        """The first frame arrived whole: no longer evictable. False if it was evicted meanwhile."""
        with self._lock:
            if slot not in self._slots:
                return False
            slot.state = CHECKING
            return True

    def authenticated(self, slot: Slot) -> None:
        with self._lock:
            slot.state = AUTHENTICATED

    def release(self, slot: Slot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)


def _oldest_pending(slots: list[Slot]) -> Slot | None:
    return min((s for s in slots if s.state == PENDING), key=lambda s: s.accepted, default=None)


def evict(slot: Slot, wire: bytes) -> None:
    """Send a displaced connection ``wire`` (a framed "busy") and shut it; its thread then sees EOF.

    Called from the accepting thread while the connection's thread may be reading, so it never
    blocks (``MSG_DONTWAIT``) and never touches the socket's timeout. A TLS connection is only
    shut: its TLS state belongs to its own thread, and "busy" in clear would read as a broken
    handshake; its client sees the connection close and retries. The shutdown is the plain
    socket's (``socket.socket.shutdown``), which leaves that TLS state alone.
    """
    if not slot.tls:
        try:
            slot.sock.send(wire, socket.MSG_DONTWAIT)
        except OSError:
            pass
    try:
        socket.socket.shutdown(slot.sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Throttle:
    """Logs the first event of a kind per ``interval`` and then how many more there were.

    A flood makes thousands of identical events (evictions, first-frame timeouts); the log should
    say that it happens and how much, not grow by a line each.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self._log = logger
        self._interval = interval
        self._state: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._state.get(kind, (-self._interval, 0))
            if now - last < self._interval:
                self._state[kind] = (last, suppressed + 1)
                return
            self._state[kind] = (now, 0)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {now - last:.0f}s)"
        self._log.warning(message, *args)
