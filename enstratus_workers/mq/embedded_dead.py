"""Dead letters of the embedded queue: rows in state ``dead``, listed, moved back or deleted.

Each operation is one transaction on the queue file, so a redrive is atomic here: the message is
in its queue or in the dead-letter queue, never both, never neither.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Sequence

from enstratus_workers.mq.base import DeadLetter
from enstratus_workers.mq.embedded_db import Transaction, chunks, marks


def _rows(conn: sqlite3.Connection, queue: str, message_ids: Sequence[str] | None) -> list[int]:
    """Row ids of the dead letters of ``queue`` with these message ids (all for None), oldest first."""
    if message_ids is None:
        return [r for (r,) in conn.execute("SELECT id FROM messages WHERE state = 'dead' AND queue = ? "
                                           "ORDER BY id", (queue,))]
    wanted, rows = sorted(set(message_ids)), []
    for chunk in chunks(wanted):
        rows += [r for (r,) in conn.execute(
            f"SELECT id FROM messages WHERE state = 'dead' AND queue = ? AND message_id IN ({marks(len(chunk))})",
            (queue, *chunk))]
    return sorted(rows)


def list_dead(conn: sqlite3.Connection, queue: str, limit: int) -> list[DeadLetter]:
    rows = conn.execute("SELECT message_id, body, headers, dead_reason, dead_at FROM messages "
                        "WHERE state = 'dead' AND queue = ? ORDER BY id LIMIT ?", (queue, max(0, limit)))
    return [DeadLetter(queue=queue, message_id=mid, body=bytes(body), headers=json.loads(headers),
                       reason=reason, dead_at_ms=None if dead_at is None else int(dead_at * 1000))
            for mid, body, headers, reason, dead_at in rows]


def redrive(conn: sqlite3.Connection, queue: str, message_ids: Sequence[str] | None) -> int:
    """Re-insert each as a new row (so it queues behind what is waiting, as a republish does on
    a broker), fresh: not redelivered, no delay; then delete the dead row. One transaction."""
    if message_ids is not None and not message_ids:
        return 0
    now = time.time()
    with Transaction(conn):
        rows = _rows(conn, queue, message_ids)
        for chunk in chunks(rows):
            conn.execute("INSERT INTO messages (queue, body, message_id, headers, created) "
                         "SELECT queue, body, message_id, headers, ? FROM messages "
                         f"WHERE id IN ({marks(len(chunk))}) ORDER BY id", (now, *chunk))
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks(len(chunk))})", chunk)
    return len(rows)


def purge(conn: sqlite3.Connection, queue: str, message_ids: Sequence[str] | None) -> int:
    if message_ids is not None and not message_ids:
        return 0
    with Transaction(conn):
        rows = _rows(conn, queue, message_ids)
        for chunk in chunks(rows):
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks(len(chunk))})", chunk)
    return len(rows)


def purge_before(conn: sqlite3.Connection, queue: str, before_ms: int) -> int:
    """Delete the dead letters of ``queue`` that died before ``before_ms``; one transaction."""
    with Transaction(conn):
        return conn.execute("DELETE FROM messages WHERE state = 'dead' AND queue = ? AND dead_at < ?",
                            (queue, before_ms / 1000)).rowcount
