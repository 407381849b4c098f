"""Hot reads on MySQL/MariaDB get each row as one JSON array, not as columns.

PyMySQL reads a result's column descriptors in Python, one packet per column, and SQLAlchemy
builds its result metadata per column too: for a read of one row, each column costs more than
its value (here: a nine-column read of one job row took 0.15-0.21 ms of the client's CPU through
SQLAlchemy, the same row as one ``JSON_ARRAY`` column 0.10-0.15 ms, bench/README.md). Two such
reads are on every idle job's way: the relay pass's read of the pending jobs (``outbox._few``)
and the subscriber's check of a delivery against its row (``JobStore.delivery_rows``); a third
ends every waited job's: ``JobStore.get``, the whole row (20 columns: 0.26-0.31 ms of CPU a
read packed, 0.42-0.49 ms as columns). The server's ``JSON_ARRAY`` writes numbers as numbers,
NULL as null and text as JSON strings, so ``json.loads`` gives back the values the columns would
have (but a correlated ``EXISTS``, which MariaDB writes as the string "0" or "1").

SQLite, embedded, reads its rows in C and keeps its columns (its JSON functions are built in only
since 3.38).

On MySQL/MariaDB the read runs on the driver's own cursor: SQLAlchemy's execution of a driver
SQL string (its context, its events, its result) cost more than the read's row, as a column did
(the subscriber's check of a delivery on its held connection: 0.20-0.24 ms of the client's CPU
through ``exec_driver_sql``, 0.12-0.14 ms on the cursor, bench/README.md). What SQLAlchemy's
execution does on the way is kept: the pool still learns that a statement ran (so it rolls the
connection back when given back), and a read that fails on the cursor runs again through
``exec_driver_sql`` if it lost its connection, where SQLAlchemy judges the loss as it judges
every statement's (the connection is invalidated, a Galera writer that moved is followed); any
other failure is raised as SQLAlchemy's error for it (``_rows``).
"""

from __future__ import annotations

import json
from typing import Sequence

import sqlalchemy as sa

from .engine import statement_ran
from .retry import LOST_CODES, NODE_NOT_READY, error_code


def select(conn, columns: str, rest: str) -> list[Sequence]:
    """``SELECT columns rest`` on ``conn`` (driver SQL), each row a sequence of the columns'
    values: packed on MySQL/MariaDB (on the driver's cursor), as columns on SQLite."""
    if conn.dialect.name != "mysql":
        return list(conn.exec_driver_sql(f"SELECT {columns} {rest}"))
    return [json.loads(r[0]) for r in _rows(conn, f"SELECT JSON_ARRAY({columns}) {rest}")]


def _rows(conn, sql: str) -> list[tuple]:
    """The rows of ``sql`` read on the driver's cursor of ``conn``, in the transaction ``conn``
    is in. A failure is SQLAlchemy's error: a lost connection's read runs again through
    SQLAlchemy (on a dead connection, where it fails again and is judged as every statement's
    loss is); any other failure (a bad statement, a deadlock that rolled the transaction back)
    is raised as SQLAlchemy would raise it, never run again (the transaction it was in may be
    gone)."""
    if conn.closed or conn.invalidated:   # SQLAlchemy says what is wrong with it
        return conn.exec_driver_sql(sql).fetchall()
    statement_ran(conn)
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        if error_code(exc) in LOST_CODES or error_code(exc) == NODE_NOT_READY \
                or conn.dialect.is_disconnect(exc, None, None):
            return conn.exec_driver_sql(sql).fetchall()
        raise sa.exc.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                         dialect=conn.dialect) from exc
    finally:
        cursor.close()
