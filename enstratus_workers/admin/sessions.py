"""The pages' login sessions: random ids the server remembers, with an idle and an absolute expiry.

A session id is ``secrets.token_urlsafe(32)`` (256 random bits), handed to the browser as the
cookie and known to the server only by its SHA-256, so the table itself holds nothing a reader
could replay. A session ends when it has not been used for ``idle_s`` (``admin.cfg``
``session_idle``, 30 min), ``max_s`` after the login whatever happens (``session_max``, 12 h), or
at logout. The ids carry nothing of the token: changing the token does not end them, but a
restart does.

Sessions live in this daemon's memory: a restart of the admin daemon logs everyone out, and each
admin host has its own sessions (a browser logs in to each). That is the price of keeping the
token's holders the only ones who can create state here; the fleet's state stays in the engines.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

MAX_SESSIONS = 1000  # more open logins than any team has; the oldest goes first beyond it


@dataclass
class _Session:
    created: float
    last_used: float


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()


def session_digest(session_id: str) -> str:
    """The hex of what the store keeps a session under: safe to show (it cannot be replayed)."""
    return _key(session_id).hex()


class SessionStore:
    """Open, check, and end sessions; thread-safe (requests are answered from a thread pool)."""

    def __init__(self, idle_s: float, max_s: float, clock: Callable[[], float] = time.monotonic):
        self.idle_s, self.max_s, self._clock = idle_s, max_s, clock
        self._sessions: dict[bytes, _Session] = {}
        self._lock = threading.Lock()

    def open(self) -> str:
        """A new session id (the cookie's value)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._prune(now)
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].last_used)]
            self._sessions[_key(session_id)] = _Session(now, now)
        return session_id

    def use(self, session_id: str | None) -> bool:
        """True if the session is open; it then counts as used now (the idle clock restarts)."""
        if not session_id:
            return False
        key, now = _key(session_id), self._clock()
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                return False
            if self._expired(found, now):
                del self._sessions[key]
                return False
            found.last_used = now
            return True

    def close(self, session_id: str | None) -> None:
        """End the session (logout); an unknown id is no error."""
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            self._prune(self._clock())
            return len(self._sessions)

    def _expired(self, s: _Session, now: float) -> bool:
        return now - s.last_used >= self.idle_s or now - s.created >= self.max_s

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]
