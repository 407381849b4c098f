"""SQLAlchemy engines for the provisioning and analytics databases: SQLite embedded, MySQL in production.

One code path over both dialects; the differences (SQLite's locking, MySQL's isolation level)
are settled here, once, so the stores above never branch on the dialect. A MySQL URL may name
the nodes of a Galera cluster (``config/dburl.py``): its engine then connects to the cluster's
writer node and follows it (``db/writer.py``); every other engine option is the same.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import sqlalchemy as sa

from ..config import dburl
from ..errors import ConfigError
from ..layout import Layout
from . import writer

log = logging.getLogger(__name__)

#: A pooled connection is replaced once this old (below MySQL's default ``wait_timeout``, 8 h),
#: and so is a held one (``db/held_connection.py``)
RECYCLE_S = 3600


def make_engine(url: str, layout: Layout, *, create_database: bool = True) -> sa.Engine:
    """An engine for ``url``; relative SQLite paths are relative to the install root."""
    try:
        parsed = dburl.parse(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    backend = parsed.url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed.url, layout)
    if backend == "mysql":
        engine = mysql_engine(
            parsed,
            pool_recycle=RECYCLE_S,   # below wait_timeout
            isolation_level="READ COMMITTED",  # SKIP LOCKED without gap locks on the outbox
            connect_args={"connect_timeout": 10},
            pool_reset_on_return=None,   # _rollback_only_when_open does it, when it is needed
        )
        if create_database:
            _ensure_mysql_database(parsed, getattr(engine, "enstratus_writer", None))
        _ping_when_idle(engine)
        _rollback_only_when_open(engine)
        return engine
    raise ConfigError(f"unsupported database '{backend}' (use sqlite or mysql+pymysql)")


def mysql_engine(parsed: dburl.DbUrl, *, follow: writer.Writer | None = None, **options) -> sa.Engine:
    """An engine for a MySQL/MariaDB URL with ``create_engine``'s ``options``; for a cluster's
    URL, one that connects to the writer node and follows it (``db/writer.py``), sharing
    ``follow``'s choice if given. TLS only if the URL asks for it (``dburl.driver_tls``)."""
    options["connect_args"] = {**dburl.driver_tls(parsed.url.query), **options.get("connect_args", {})}
    engine = sa.create_engine(parsed.url, **options)
    if parsed.clustered:
        writer.attach(engine, parsed, follow)
    return engine


IDLE_PING_S = 1.0   # a pooled MySQL connection unused for longer is pinged before it is lent


def _ping_when_idle(engine: sa.Engine) -> None:
    """A MySQL restart leaves dead connections in the pool: ping one before lending it, as
    ``pool_pre_ping`` does, but only if it sat unused for over ``IDLE_PING_S``.

    ``pool_pre_ping`` pings on every checkout: one more round trip for every transaction of the
    hot path (a submit, a relay, a delivery check, an outcome batch). A connection given back a
    moment ago is as alive as a ping would show; if the server went down in that moment the
    statement fails as a disconnect, SQLAlchemy empties the pool, and the caller's retry (the
    publisher's and recorder's backoff, a 503 for an API submit) gets fresh connections.
    """
    import time

    @sa.event.listens_for(engine, "checkin")
    def _given_back(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _lent(dbapi_conn, record, _proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= IDLE_PING_S:
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except Exception as exc:  # noqa: BLE001 - any failure means this connection is gone
            # the pool drops it and lends another (up to three tries), as pool_pre_ping would
            raise sa.exc.DisconnectionError(f"pooled connection is gone: {exc!r}") from exc


#: ``connection_record.info`` key: a statement ran on the connection since its last commit or
#: rollback (or one of them failed), so a transaction may be open on the server
_MAY_BE_OPEN = "enstratus_may_be_open"


def statement_ran(conn: sa.Connection) -> None:
    """Note that a statement ran on ``conn`` outside SQLAlchemy's execution (on its driver's
    cursor, ``db/driver.py``), as the ``before_cursor_execute`` event below notes the others: a
    transaction may be open, so the pool rolls the connection back when it is given back."""
    _mark(conn, True)


def _mark(conn: sa.Connection, may_be_open: bool) -> None:
    # never through an invalidated Connection: reaching for its DBAPI connection would try
    # to reconnect, and raise PendingRollbackError over the loss being rolled back (seen in
    # the fleet test: a submit during a database node's kill failed with it, not retried)
    if not (conn.closed or conn.invalidated):
        conn.connection.info[_MAY_BE_OPEN] = may_be_open


def _rollback_only_when_open(engine: sa.Engine) -> None:
    """Give a connection back to the pool without a ROLLBACK when nothing is left to roll back.

    SQLAlchemy rolls back every connection given back, unless it rolled the transaction back
    itself: a ``with engine.begin()`` that committed is followed by a ROLLBACK, one more round
    trip on every write of the hot path (a submit's ring waits for it; measured in
    bench/README.md, "A ROLLBACK after every COMMIT"). Here the pool's reset is this event
    (the pattern of SQLAlchemy's "Using the reset event" recipe): the connection is rolled back
    if any statement ran on it since its last commit or rollback, or if one of those failed;
    a connection whose transaction was committed, or never begun, is given back as it is. The
    server's own status flag cannot say it: PyMySQL does not update it after a result set, so
    an open ``SELECT ... FOR UPDATE`` reads as no transaction.
    """

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _statement(conn, _cursor, _statement, _parameters, _context, _executemany):
        _mark(conn, True)

    @sa.event.listens_for(engine, "commit")
    def _committing(conn):
        # before the COMMIT (or ROLLBACK, below): if it fails, handle_error marks it again
        _mark(conn, False)

    @sa.event.listens_for(engine, "rollback")
    def _rolling_back(conn):
        _mark(conn, False)

    @sa.event.listens_for(engine, "handle_error")
    def _failed(context):
        # a lost connection is invalidated: the pool never lends it again
        if context.connection is not None and not context.is_disconnect:
            _mark(context.connection, True)

    @sa.event.listens_for(engine, "reset")
    def _reset(dbapi_conn, record, state):
        # terminate_only: it is being closed, and the server ends its transaction with it
        if not (state.terminate_only or state.transaction_was_reset) and record.info.get(_MAY_BE_OPEN, True):
            dbapi_conn.rollback()
        record.info[_MAY_BE_OPEN] = False


def _sqlite_engine(parsed, layout: Layout) -> sa.Engine:
    database = parsed.database or ""
    if database and database != ":memory:":
        path = layout.resolve(database)
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
    engine = sa.create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from the sqlite3 module so BEGIN IMMEDIATE below is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _wal(cur)                                 # readers never block the writer
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Take the write lock up front: several processes (publisher, subscriber, CLI) write the
        # same file, and a deferred transaction upgrading to a writer can fail with SQLITE_BUSY.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _wal(cur, wait: float = 30.0) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself, and SQLite
    answers "database is locked" at once, without its busy handler, while another process has
    it open: so several daemons starting on a new file retry here, until ``wait`` runs out."""
    if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _ensure_mysql_database(parsed: dburl.DbUrl, follow: writer.Writer | None = None) -> None:
    """Create the database named in the URL if the server lacks it (first start on a new
    server; on a cluster, on its writer node, which replicates it to the others)."""
    name = parsed.url.database
    if not name:
        raise ConfigError("a MySQL URL must name its database: mysql+pymysql://user@host:3306/provisioning")
    server = mysql_engine(dburl.DbUrl(parsed.url.set(database=""), parsed.nodes), follow=follow,
                          connect_args={"connect_timeout": 10})
    try:
        with server.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE IF NOT EXISTS `{name.replace('`', '')}` CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        log.warning("could not ensure database %s exists: %s", name, exc.orig)
    finally:
        server.dispose()
