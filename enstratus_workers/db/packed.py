"""Hot reads on MySQL/MariaDB get each row as one JSON array, not as columns.

PyMySQL reads a result's column descriptors in Python, one packet per column, and SQLAlchemy
builds its result metadata per column too: for a read of one row, each column costs more than
its value (here: a nine-column read of one job row took 0.15-0.21 ms of the client's CPU through
SQLAlchemy, the same row as one ``JSON_ARRAY`` column 0.10-0.15 ms, bench/README.md). Two such
reads are on every idle job's way: the relay pass's read of the pending jobs (``outbox._few``)
and the subscriber's check of a delivery against its row (``JobStore.delivery_rows``); a third
ends every waited job's: ``JobStore.get``, the whole row (20 columns: 0.26-0.31 ms of CPU a
read packed, 0.42-0.49 ms as columns). The
server's ``JSON_ARRAY`` writes numbers as numbers, NULL as null and text as JSON strings, so
``json.loads`` gives back the values the columns would have.

SQLite, embedded, reads its rows in C and keeps its columns (its JSON functions are built in only
since 3.38).
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence


def packs(dialect_name: str) -> bool:
    """Whether reads on this dialect come packed."""
    return dialect_name == "mysql"


def select_list(dialect_name: str, columns: str) -> str:
    """``columns`` (a select list) as the one column of a packed read, or as they are."""
    return f"JSON_ARRAY({columns})" if packs(dialect_name) else columns


def unpacked(dialect_name: str, rows: Iterable[Sequence]) -> list[Sequence]:
    """The rows of a read made with ``select_list``, as lists of the columns' values."""
    if packs(dialect_name):
        return [json.loads(r[0]) for r in rows]
    return list(rows)
