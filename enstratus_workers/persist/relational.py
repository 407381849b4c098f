"""The relational backend: the same tables as SQLite, in MySQL or MariaDB through PyMySQL.

Transactions run at READ COMMITTED: a compare-and-swap ``UPDATE`` needs no snapshot, and
without REPEATABLE READ's gap locks two writers replacing the index rows of neighbouring keys
do not deadlock each other. Deadlocks and lock-wait timeouts that still happen are retried.
"""

from __future__ import annotations

import logging

from sqlalchemy import create_engine, exc
from sqlalchemy.engine import make_url

from enstratus_workers.errors import ConfigError
from enstratus_workers.persist.sql_store import SqlStore

log = logging.getLogger(__name__)

# ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
_TRANSIENT_CODES = {1213, 1205}


def _is_transient(e: exc.DBAPIError) -> bool:
    args = getattr(e.orig, "args", ())
    return bool(args) and args[0] in _TRANSIENT_CODES


class RelationalStore(SqlStore):
    """Objects in a MySQL/MariaDB database given by a ``mysql+pymysql://`` URL."""

    name = "relational"

    def __init__(self, url: str, *, connect_timeout: int = 10, read_timeout: int = 60,
                 pool_size: int = 5):
        try:
            parsed = make_url(url)
        except exc.ArgumentError:
            raise ConfigError("not a database URL (expected mysql+pymysql://user:pw@host/db)",
                              key="dsn.relational.url") from None
        if parsed.get_backend_name() not in ("mysql", "mariadb"):
            raise ConfigError(f"the relational backend speaks MySQL/MariaDB, "
                              f"not {parsed.get_backend_name()!r}", key="dsn.relational.url")
        engine = create_engine(
            parsed,
            isolation_level="READ COMMITTED",
            pool_size=pool_size,
            pool_pre_ping=True,        # a connection the server dropped is replaced, not used
            pool_recycle=3600,         # ... and none outlives the server's wait_timeout
            connect_args={"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                          "write_timeout": read_timeout, "charset": "utf8mb4"})
        super().__init__(engine, transient=_is_transient)
        log.debug("relational persistence at %s", parsed.render_as_string(hide_password=True))
