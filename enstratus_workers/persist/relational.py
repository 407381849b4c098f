"""The relational backend: the same tables as SQLite, in MySQL or MariaDB through PyMySQL.

Transactions run at READ COMMITTED: a compare-and-swap ``UPDATE`` needs no snapshot, and
without REPEATABLE READ's gap locks two writers replacing the index rows of neighbouring keys
do not deadlock each other. Deadlocks, lock-wait timeouts and Galera certification failures
that still happen are retried (``SqlStore._run``, through ``db/retry.py``). The URL may name the
nodes of a Galera cluster: the store then writes to its writer node (``db/writer.py``).
"""

from __future__ import annotations

import logging

from enstratus_workers.config import dburl
from enstratus_workers.db.engine import mysql_engine
from enstratus_workers.errors import ConfigError
from enstratus_workers.persist.sql_store import SqlStore

log = logging.getLogger(__name__)


class RelationalStore(SqlStore):
    """Objects in a MySQL/MariaDB database given by a ``mysql+pymysql://`` URL."""

    name = "relational"

    def __init__(self, url: str, *, connect_timeout: int = 10, read_timeout: int = 60,
                 pool_size: int = 5):
        try:
            parsed = dburl.parse(url)
        except ValueError:
            raise ConfigError("not a database URL (expected mysql+pymysql://user:pw@host/db, "
                              "or host1,host2,host3 for a cluster)", key="dsn.relational.url") from None
        if parsed.url.get_backend_name() not in ("mysql", "mariadb"):
            raise ConfigError(f"the relational backend speaks MySQL/MariaDB, "
                              f"not {parsed.url.get_backend_name()!r}", key="dsn.relational.url")
        engine = mysql_engine(
            parsed,
            isolation_level="READ COMMITTED",
            pool_size=pool_size,
            pool_pre_ping=True,        # a connection the server dropped is replaced, not used
            pool_recycle=3600,         # ... and none outlives the server's wait_timeout
            connect_args={"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                          "write_timeout": read_timeout, "charset": "utf8mb4"})
        super().__init__(engine)
        log.debug("relational persistence at %s", parsed.render(hide_password=True))
