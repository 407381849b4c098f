"""The subscriber's own database connection for the delivery check, held between checks.

Every delivery is checked against its job's row before it runs (``daemon.py``), so the check is
on every job's path. Through the pool it costs, beside its one ``SELECT``, a checkout (and a
ping when the connection sat idle), and a ``ROLLBACK`` at the check-in that ends the read's
transaction. A connection held by the main loop, in autocommit, costs the ``SELECT`` alone:
each statement reads the latest committed rows, as a new transaction in ``READ COMMITTED`` does.

Only on a single MySQL/MariaDB server. SQLite takes its write lock at every ``BEGIN`` (a held
connection would keep the others out), and a cluster's engine follows the writer node through
the pool's checkouts (``db/writer.py``), which a held connection would skip (and read a node
that no longer is the writer): both keep the pool's connection per check.

A held connection that the server dropped (a restart, ``wait_timeout``) fails its next check as
a disconnect: it is replaced and the check made again once, at once; any other failure is the
caller's (the check is retried with backoff, the deliveries wait unacked).
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import sqlalchemy as sa

log = logging.getLogger(__name__)

T = TypeVar("T")


class HeldConnection:
    """``run(read)`` calls ``read(conn)`` with the held connection, or with None where none is
    held (``read`` then takes one from the pool): one thread's, not shared."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.holds = engine.dialect.name == "mysql" and getattr(engine, "enstratus_writer", None) is None
        self._conn: sa.Connection | None = None
        self.replaced = 0       # connections dropped by the server and replaced

    def run(self, read: Callable[[sa.Connection | None], T]) -> T:
        if not self.holds:
            return read(None)
        try:
            return read(self._connection())
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            self.replaced += 1
            log.info("the held connection was dropped (%s); reading on a new one", type(exc.orig).__name__)
            self.close()
            return read(self._connection())

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("error closing the held connection", exc_info=True)
            self._conn = None
