"""The database server's clock, for the times hosts compare with each other's.

A fleet's hosts share the provisioning database; what one host writes as a time and another
judges (a heartbeat's expiry, the retention lease, a cloud key's next free turn) is written and
judged on the server's clock, read in the statement that uses it, so that no host's own clock
has to agree with the others'. On SQLite there is one host, whose clock is the database's: the
functions answer None, and the caller uses ``enstratus_workers.clock``.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..clock import now_ms, now_us

# The statement's start, as NOW(): UNIX_TIMESTAMP() and NOW(6) read the same instant. Not
# UNIX_TIMESTAMP(NOW(6)): that converts a local time back, an hour off in the hour a time zone's
# clocks go back.
_SECONDS, _MICROS = "UNIX_TIMESTAMP()", "MICROSECOND(NOW(6))"


def db_now_ms(dialect: str):
    """The server's clock in ms since the epoch, as an SQL expression; None on SQLite."""
    if dialect != "mysql":
        return None
    return sa.literal_column(f"({_SECONDS} * 1000 + {_MICROS} DIV 1000)", sa.BigInteger)


def db_now_us(dialect: str):
    """The server's clock in microseconds since the epoch, as an SQL expression; None on SQLite."""
    if dialect != "mysql":
        return None
    return sa.literal_column(f"({_SECONDS} * 1000000 + {_MICROS})", sa.BigInteger)


def now_ms_for(engine: sa.Engine, now: int | None = None):
    """The time a statement on ``engine`` writes or compares with: ``now`` if given (a test's,
    a caller's); else the server's clock, as an SQL expression the statement evaluates; else, on
    SQLite, this host's clock."""
    if now is not None:
        return now
    clock = db_now_ms(engine.dialect.name)
    return now_ms() if clock is None else clock


def server_now_us(conn: sa.Connection) -> int:
    """The server's clock in microseconds, read on ``conn``; this host's on SQLite."""
    clock = db_now_us(conn.dialect.name)
    return now_us() if clock is None else int(conn.execute(sa.select(clock)).scalar())
