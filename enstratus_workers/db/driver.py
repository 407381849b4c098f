"""The idle path's statements on the driver's own cursor (MySQL/MariaDB), not through SQLAlchemy's
execution.

For a statement of one or a few rows, SQLAlchemy's execution of driver SQL (its context, its
events, its result object) costs more of the client's CPU than the driver's round trip does:
the subscriber's check of a delivery on its held connection took 0.20-0.24 ms of CPU through
``exec_driver_sql``, 0.12-0.14 ms on the cursor (bench/README.md). Every job pays a few such
statements on its way (the relay's read and mark, the delivery check, the recorder's outcome,
event and totals), each in a daemon whose CPU the next job waits for. So they run here, on the
cursor of the connection SQLAlchemy lent, in the transaction that connection is in, with the
same SQL and parameters ``exec_driver_sql`` would send (so the same escaping, and the same
``FOUND_ROWS`` row counts: the flag is the connection's).

What SQLAlchemy's execution does on the way is kept:

- the connection's transaction begins if none has (SQLAlchemy's autobegin), so that the
  caller's ``commit()`` commits what ran here, and the pool learns that a statement ran
  (``engine.statement_ran``), so it rolls the connection back when it is given back;
- a failure is SQLAlchemy's error, judged as every statement's is. A statement that lost its
  connection is run again through ``exec_driver_sql``, on that dead connection, where it fails
  again and SQLAlchemy invalidates the connection and follows a Galera writer that moved (so
  ``HeldConnection`` replaces it and ``db/retry.py`` retries, as before). Any other failure (a
  bad statement, a refused row, a deadlock that rolled the transaction back) is raised as the
  SQLAlchemy error for it and never run again: its transaction may be gone, and a statement run
  again in a new one would commit half of it.

SQLite, embedded and read in C, keeps ``exec_driver_sql``.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

from .engine import statement_ran
from .retry import LOST_CODES, NODE_NOT_READY, error_code


class Ran(NamedTuple):
    """What a write did: the rows it matched, and the id an INSERT of one row made."""

    rowcount: int
    lastrowid: int | None


def rows(conn: sa.Connection, sql: str) -> list[tuple]:
    """The rows of the read ``sql`` (no parameters: the hot reads inline their ints) on ``conn``."""
    if _through_sqlalchemy(conn):
        return conn.exec_driver_sql(sql).fetchall()
    return _on_cursor(conn, sql, None, lambda cursor: list(cursor.fetchall()),
                      lambda: conn.exec_driver_sql(sql).fetchall())


def execute(conn: sa.Connection, sql: str, params: tuple | None = None) -> Ran:
    """Run the write ``sql`` on ``conn``: its row count, and the id it made."""
    if _through_sqlalchemy(conn):
        return _ran(conn.exec_driver_sql(sql, params or ()))
    return _on_cursor(conn, sql, params, lambda cursor: Ran(cursor.rowcount, cursor.lastrowid),
                      lambda: _ran(conn.exec_driver_sql(sql, params or ())))


def _through_sqlalchemy(conn: sa.Connection) -> bool:
    # an invalidated or closed connection: SQLAlchemy says what is wrong with it
    return conn.dialect.name != "mysql" or conn.closed or conn.invalidated


def _ran(result) -> Ran:
    return Ran(result.rowcount, result.lastrowid)


def _on_cursor(conn: sa.Connection, sql: str, params, done, again):
    """``done(cursor)`` once ``sql`` ran on the driver's cursor; ``again()`` (the same through
    SQLAlchemy) if it lost its connection; SQLAlchemy's error for any other failure."""
    if not conn.in_transaction():
        conn.begin()   # as SQLAlchemy's execution autobegins: the caller's commit() then commits it
    statement_ran(conn)
    cursor = conn.connection.cursor()
    try:
        # no parameters as SQLAlchemy passes none: an empty mapping, so that "%%" means "%" alike
        cursor.execute(sql, params if params is not None else {})
        return done(cursor)
    except conn.dialect.loaded_dbapi.Error as exc:
        code = error_code(exc)
        if code in LOST_CODES or code == NODE_NOT_READY or conn.dialect.is_disconnect(exc, None, None):
            return again()
        raise sa.exc.DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error,
                                         dialect=conn.dialect) from exc
    finally:
        cursor.close()
