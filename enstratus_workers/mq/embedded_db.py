"""The embedded queue's SQLite file: how it is opened, its schema, and how an older file is brought
up to date in place (a queue file outlives upgrades of the service, and may hold work).

Shared by ``embedded.py`` (publish, claim, settle) and ``embedded_dead.py`` (dead letters).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 30.0      # how long a statement waits for another process's write lock
CHUNK = 500                # ids per IN (...) list, well under SQLite's variable limit

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue        TEXT NOT NULL,
    body         BLOB NOT NULL,
    message_id   TEXT,
    headers      TEXT NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL DEFAULT 'ready',   -- ready | unacked | dead
    consumer     TEXT,
    lease_until  REAL,
    redelivered  INTEGER NOT NULL DEFAULT 0,
    dead_reason  TEXT,
    created      REAL NOT NULL,
    ready_at     REAL,                            -- delayed: not deliverable before (epoch s)
    dead_at      REAL                             -- when it was dead-lettered (epoch s)
);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, queue);
CREATE TABLE IF NOT EXISTS consumers (
    id               TEXT PRIMARY KEY,
    host             TEXT NOT NULL,
    pid              INTEGER NOT NULL,
    started          TEXT,
    queues           TEXT NOT NULL,
    heartbeat_until  REAL NOT NULL
);
"""

# Columns added after the first release: a file created before them gets them on open.
_ADDED_COLUMNS = {"ready_at": "REAL", "dead_at": "REAL"}

# ``ready_at`` is set only on a delayed message not yet claimed (claiming clears it), so this
# index stays as small as the set of waiting delayed messages and finds the next one due at once.
_DELAYED_INDEX = ("CREATE INDEX IF NOT EXISTS messages_delayed ON messages (queue, ready_at) "
                  "WHERE ready_at IS NOT NULL")


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode that waits for the write lock instead of failing."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction takes the write
    # lock up front and waits for it (a deferred one could fail with SQLITE_BUSY mid-way).
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class Transaction:
    """``with Transaction(conn):`` = BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def create_or_migrate(conn: sqlite3.Connection) -> None:
    """Create what is missing and add the columns an older file lacks, in one transaction
    (the write lock makes two processes opening an old file at once take turns)."""
    with Transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
        conn.execute(_DELAYED_INDEX)


def chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def marks(n: int) -> str:
    return ",".join("?" * n)
