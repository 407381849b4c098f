"""A daemon thread's own database connection, held between uses instead of borrowed from the pool.

Two reads are on every job's path: the subscriber's check of each delivery against its job's row
(``daemons/subscriber/daemon.py``) and the publisher's relay pass (``db/outbox.py``). Through the
pool each costs, beside its statements, a checkout (and a ping when the connection sat idle), the
``Connection`` built around it and a check-in. Held by the one thread that uses it, that is paid
once: a relay pass on it cost the publisher 0.91x the CPU per idle job (bench/README.md).

- ``autocommit=True`` (the subscriber's check): each statement reads the latest committed rows,
  as a new transaction in ``READ COMMITTED`` does, and no ``ROLLBACK`` ends the read.
- ``autocommit=False`` (the publisher's pass): ``run`` hands over the connection for the caller's
  own transaction (``conn.begin()``); between runs none is open.

Only on a single MySQL/MariaDB server. SQLite takes its write lock at every ``BEGIN`` (a held
connection would keep the others out), and a cluster's engine follows the writer node through
the pool's checkouts (``db/writer.py``), which a held connection would skip (and read a node
that no longer is the writer): both borrow the pool's connection for each use (``run`` hands
over None; the caller then borrows one).

A connection that the server dropped (a restart, ``wait_timeout``) fails its next statement as a
disconnect, and is replaced. With ``retry=True`` (a read, safe to repeat) the use is then made
again once, at once. With ``retry=False`` (a relay pass, which may have published before it
failed) the failure is the caller's, and its next use gets the new connection; so that a restart
does not cost such a caller a failed use, a connection it left unused for over
``engine.IDLE_PING_S`` is pinged first, as the pool pings one it lends, and replaced if the ping
fails. Any other failure is the caller's.

A held connection is replaced once ``max_age_s`` old (``engine.RECYCLE_S``, as the pool recycles
its own), before a use, never within one. A daemon runs for months, and a connection held as long
would stay on the server it first reached (a proxy's or a virtual IP's node after a failover,
a server restarted in place behind it) and keep what the server built up for it, for ever.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import sqlalchemy as sa

from .engine import IDLE_PING_S, RECYCLE_S

log = logging.getLogger(__name__)

T = TypeVar("T")


class HeldConnection:
    """``run(use)`` calls ``use(conn)`` with the held connection, or with None where none is
    held (``use`` then borrows one from the pool): one thread's, not shared."""

    def __init__(self, engine: sa.Engine, *, autocommit: bool = True, retry: bool = True):
        self.engine = engine
        self.autocommit, self.retry = autocommit, retry
        self.holds = engine.dialect.name == "mysql" and getattr(engine, "enstratus_writer", None) is None
        self._conn: sa.Connection | None = None
        self._used_at = 0.0
        self._opened_at = 0.0
        self.max_age_s = RECYCLE_S   # held this long, a connection is replaced (module docstring)
        self.replaced = 0       # connections dropped by the server and replaced
        self.recycled = 0       # connections replaced at their age

    def run(self, use: Callable[[sa.Connection | None], T]) -> T:
        if not self.holds:
            return use(None)
        try:
            return use(self._connection())
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            self.replaced += 1
            log.info("the held connection was dropped (%s); %s", type(exc.orig).__name__,
                     "using a new one" if self.retry else "the next use gets a new one")
            self.close()
            if not self.retry:
                raise
            return use(self._connection())
        finally:
            self._used_at = time.monotonic()
            self._end_transaction_left_open()

    def _end_transaction_left_open(self) -> None:
        """Without autocommit, a use that ran a statement outside its own ``begin()`` (or failed
        before it) leaves a transaction open, whose next ``begin()`` would be refused: roll it
        back, so that between uses none is open, as the module docstring promises."""
        conn = self._conn
        if self.autocommit or conn is None or conn.invalidated or conn.closed or not conn.in_transaction():
            return
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is replaced
            log.info("the held connection could not roll back a transaction left open; replacing it")
            self.close()

    def _connection(self) -> sa.Connection:
        if self._conn is not None and (self._conn.invalidated or self._conn.closed):
            self.close()     # lost in a failure the caller saw (SQLAlchemy would not reconnect it)
        if (self._conn is not None and not self.retry
                and time.monotonic() - self._used_at > IDLE_PING_S and not self._alive()):
            self.replaced += 1
            log.info("the held connection failed its ping after %.0f s unused; using a new one",
                     time.monotonic() - self._used_at)
            try:
                self._conn.invalidate()   # out of the pool: closed, it would be lent again, dead
            except Exception:  # noqa: BLE001 - it is being dropped either way
                log.debug("error invalidating the held connection", exc_info=True)
            self.close()
        if self._conn is not None and time.monotonic() - self._opened_at > self.max_age_s:
            self.recycled += 1
            try:
                self._conn.invalidate()   # closed for good: back in the pool, it would be lent again
            except Exception:  # noqa: BLE001 - it is being dropped either way
                log.debug("error closing the held connection at its age", exc_info=True)
            self.close()
        if self._conn is None:
            self._opened_at = time.monotonic()
            conn = self.engine.connect()
            self._conn = conn.execution_options(isolation_level="AUTOCOMMIT") if self.autocommit else conn
        return self._conn

    def _alive(self) -> bool:
        try:
            self._conn.connection.dbapi_connection.ping(reconnect=False)
            return True
        except Exception:  # noqa: BLE001 - any failure means this connection is gone
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("error closing the held connection", exc_info=True)
            self._conn = None
