"""The embedded backend: one SQLite file, shared safely by every process of the install.

Safe across processes because: the file is in WAL mode (readers never block the writer);
every write transaction begins ``IMMEDIATE``, taking the write lock before it reads, so two
writers queue on SQLite's busy handler instead of one failing with "database is locked" when it
tries to upgrade a read lock; and the busy timeout is long enough to outlast any one write.
WAL needs a local file system (not NFS), which ``services/worker/data`` is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL

from enstratus_workers.persist.sql_store import SqlStore

log = logging.getLogger(__name__)


class SqliteStore(SqlStore):
    """Objects in a SQLite file at ``path`` (its directory is created if missing)."""

    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(URL.create("sqlite", database=str(self.path)),
                               connect_args={"timeout": busy_timeout})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Take BEGIN away from the sqlite3 module so that we can say which kind we want.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL stays consistent
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", ""))

        # No retry on "database is locked": it means the busy timeout already ran out.
        super().__init__(engine, write_options={"sqlite_begin": "IMMEDIATE"})
        log.debug("sqlite persistence at %s", self.path)
