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

On MySQL/MariaDB the read runs on the driver's own cursor (``db/driver.py``).
"""

from __future__ import annotations

import json
from typing import Sequence

from . import driver


def select(conn, columns: str, rest: str) -> list[Sequence]:
    """``SELECT columns rest`` on ``conn`` (driver SQL), each row a sequence of the columns'
    values: packed on MySQL/MariaDB (on the driver's cursor), as columns on SQLite."""
    if conn.dialect.name != "mysql":
        return list(conn.exec_driver_sql(f"SELECT {columns} {rest}"))
    return [json.loads(r[0]) for r in driver.rows(conn, f"SELECT JSON_ARRAY({columns}) {rest}")]
