"""The embedded transport: a queue in one SQLite file, so ``make run`` needs nothing but Python.

Several processes use the file at once (the publisher inserts, the subscriber claims and settles,
the CLI reads depths), so the file is in WAL mode (readers never block the writer), every
connection waits on a busy lock instead of failing, and every write is one short transaction.

A message row is ``ready``, ``unacked`` (claimed by a consumer, under a lease) or ``dead``.
Claiming is one ``UPDATE ... RETURNING`` statement, so two consumers never get the same row.
A delayed message is a ``ready`` row with ``ready_at`` in the future, which claiming skips; the
file holds it, so no process of ours has to stay up for it to come due.
A dead letter is a ``dead`` row with its reason and time (listed and re-driven by
``embedded_dead.py``); the schema and its in-place migration are in ``embedded_db.py``.
What a consumer held comes back to ``ready`` (``redelivered`` set) when it settles it with
``nack``, when it closes, when its lease runs out (it stopped polling: the AMQP analogue is two
missed heartbeats) or, sooner, when its process is found dead on this host - which is how the work
of a killed subscriber comes back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from enstratus_workers.backoff import Backoff
from enstratus_workers.errors import ConnectionClosed, PublishError
from enstratus_workers.mq import embedded_dead
from enstratus_workers.mq.base import (
    MAX_REASON_CHARS,
    Consumer,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    QueueDepth,
    Transport,
)
from enstratus_workers.mq.embedded_db import Transaction as _Transaction
from enstratus_workers.mq.embedded_db import chunks as _chunks
from enstratus_workers.mq.embedded_db import connect as _connect
from enstratus_workers.mq.embedded_db import create_or_migrate
from enstratus_workers.mq.embedded_db import marks as _marks
from enstratus_workers.runtime import procs

log = logging.getLogger(__name__)

#: naps of an idle poll: 0.5 ms doubling to 5 ms (which bounds an idle consumer's latency); no
#: jitter: one process's poll, not a fleet's reconnect
IDLE_NAPS = Backoff(first=0.0005, cap=0.005, jitter=None)
RECLAIM_INTERVAL_S = 1.0   # how often a polling consumer looks for work of dead consumers

@dataclass(frozen=True)
class EmbeddedTag:
    """Which consumer claimed which row: settling checks both, so a stale delivery is a no-op."""

    consumer: str
    row: int


def _reclaim(conn: sqlite3.Connection, now: float, host: str) -> int:
    """Return to ``ready`` what dead consumers held; drop their rows. Returns the count released."""
    consumers = conn.execute("SELECT id, host, pid, started, heartbeat_until FROM consumers").fetchall()
    dead = [cid for cid, chost, pid, started, until in consumers
            if until < now or (chost == host and not procs.is_same_process(pid, started))]
    expired = conn.execute("SELECT 1 FROM messages WHERE state = 'unacked' AND "
                           "(lease_until < ? OR consumer NOT IN (SELECT id FROM consumers)) LIMIT 1",
                           (now,)).fetchone()
    if not dead and not expired:
        return 0  # the common case stays a read: no write lock taken
    with _Transaction(conn):
        for chunk in _chunks(dead):
            conn.execute(f"DELETE FROM consumers WHERE id IN ({_marks(len(chunk))})", chunk)
        released = conn.execute(
            "UPDATE messages SET state = 'ready', consumer = NULL, lease_until = NULL, redelivered = 1 "
            "WHERE state = 'unacked' AND (lease_until < ? OR consumer NOT IN (SELECT id FROM consumers))",
            (now,)).rowcount
    if dead or released:
        log.warning("released %d message(s) held by %d dead consumer(s) %s", released, len(dead), dead)
    return released


class EmbeddedTransport(Transport):
    """A ``Transport`` over a SQLite file. ``lease`` is how long unsettled work stays claimed
    by a consumer that stopped polling (default: two AMQP heartbeats, at least 10 s)."""

    def __init__(self, path: str | os.PathLike, *, lease: float = 120.0):
        self.path = Path(path)
        self.lease = lease
        self.host = socket.gethostname()
        self._conn: sqlite3.Connection | None = None
        self._consumers: list[EmbeddedConsumer] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # FULL: a commit is the publisher confirm, so it must survive a power cut too
            self._conn = _connect(self.path, "FULL")
            create_or_migrate(self._conn)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConnectionClosed(f"embedded queue {self.path}: transport is closed")
        return self._conn

    def declare(self, queues: Sequence[str]) -> None:
        try:
            with _Transaction(self._db()) as conn:
                conn.executemany("INSERT OR IGNORE INTO queues (name) VALUES (?)", [(q,) for q in queues])
        except sqlite3.Error as exc:
            raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """One transaction for the whole batch: its commit is the confirm of every message.

        A message for an undeclared queue is not stored (as AMQP returns an unroutable one) and
        is named in the ``PublishError`` raised after the others are committed.
        """
        if not messages:
            return
        now = time.time()
        try:
            with _Transaction(self._db()) as conn:
                names = sorted({m.queue for m in messages})
                known = {row[0] for row in conn.execute(
                    f"SELECT name FROM queues WHERE name IN ({_marks(len(names))})", names)}
                conn.executemany(
                    "INSERT INTO messages (queue, body, message_id, headers, created, ready_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(m.queue, bytes(m.body), m.message_id, json.dumps(m.headers), now,
                      now + m.delay_ms / 1000 if m.delay_ms > 0 else None)
                     for m in messages if m.queue in known])
        except (sqlite3.Error, TypeError, ValueError) as exc:
            raise ConnectionClosed(f"embedded queue {self.path}: nothing published: {exc}") from exc
        unroutable = [m.message_id for m in messages if m.queue not in known]
        if unroutable:
            raise PublishError(f"{len(unroutable)} message(s) for undeclared queue(s) "
                               f"{sorted(set(names) - known)}", unroutable)

    def consumer(self, queues: Sequence[str], prefetch: int) -> "EmbeddedConsumer":
        consumer = EmbeddedConsumer(self, list(queues), prefetch)
        self._consumers = [c for c in self._consumers if not c.closed] + [consumer]
        return consumer

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        now = time.time()
        try:
            conn = self._db()
            _reclaim(conn, now, self.host)
            conn.execute("BEGIN")  # one snapshot for every count
            try:
                counts: dict[tuple[str, str], int] = {}
                for chunk in _chunks(list(queues)):
                    # a delayed row is counted as "delayed" until it comes due, then as "ready"
                    for queue, state, n in conn.execute(
                            "SELECT queue, CASE WHEN ready_at > ? THEN 'delayed' ELSE state END AS s, count(*) "
                            f"FROM messages WHERE queue IN ({_marks(len(chunk))}) GROUP BY queue, s",
                            (now, *chunk)):
                        counts[(queue, state)] = n
                live = [json.loads(qs) for (qs,) in conn.execute(
                    "SELECT queues FROM consumers WHERE heartbeat_until >= ?", (now,))]
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc
        return [QueueDepth(queue=q, ready=counts.get((q, "ready"), 0), unacked=counts.get((q, "unacked"), 0),
                           consumers=sum(q in qs for qs in live), dead=counts.get((q, "dead"), 0),
                           delayed=counts.get((q, "delayed"), 0))
                for q in queues]

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self._dead("list dead letters", embedded_dead.list_dead, queue, limit)

    def redrive(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        moved = self._dead("redrive", embedded_dead.redrive, queue, message_ids)
        if moved:
            log.info("redrove %d dead letter(s) back to queue %s", moved, queue)
        return moved

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        purged = self._dead("purge dead letters", embedded_dead.purge, queue, message_ids)
        if purged:
            log.warning("purged %d dead letter(s) of queue %s", purged, queue)
        return purged

    def purge_dead_before(self, queue: str, before_ms: int) -> int:
        return self._dead("purge old dead letters", embedded_dead.purge_before, queue, before_ms)

    def _dead(self, what: str, fn, *args):
        try:
            return fn(self._db(), *args)
        except sqlite3.Error as exc:
            raise ConnectionClosed(f"embedded queue {self.path}: {what}: {exc}") from exc

    def ping(self) -> None:
        try:
            self._db().execute("SELECT count(*) FROM queues").fetchone()
        except sqlite3.Error as exc:
            raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EmbeddedConsumer(Consumer):
    """Claims rows for one consumer id (``host:pid:uuid``), recorded with its process start time.

    Its own connection is guarded by a lock, so settlement may come from any thread while
    ``poll`` naps between (never during) its short transactions.
    """

    def __init__(self, transport: EmbeddedTransport, queues: list[str], prefetch: int):
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.queues, self.prefetch, self.lease = queues, prefetch, transport.lease
        self.host = transport.host
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.closed = False
        self._lock = threading.Lock()
        self._held: set[int] = set()          # rows claimed and not yet settled
        self._dirty = True                    # something may be ready that we have not looked for
        self._seen_version = None
        self._next_due: float | None = None   # when the next delayed message we saw comes due
        self._renewed = self._reclaimed = 0.0
        try:
            self._conn = _connect(transport.path, "NORMAL")  # a lost ack only means a redelivery
        except sqlite3.Error as exc:
            raise ConnectionClosed(f"embedded queue {transport.path}: {exc}") from exc
        self.path = transport.path
        try:
            with _Transaction(self._conn) as conn:
                conn.execute("INSERT INTO consumers (id, host, pid, started, queues, heartbeat_until) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (self.id, self.host, os.getpid(), procs.start_ticks(os.getpid()),
                              json.dumps(queues), time.time() + self.lease))
        except sqlite3.Error as exc:
            self._conn.close()
            raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc
        self._renewed = time.monotonic()

    def poll(self, timeout: float, limit: int) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, timeout)
        naps = 0
        while True:
            deliveries = self._try_claim(limit)
            if deliveries:
                return deliveries
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            naps += 1
            time.sleep(min(IDLE_NAPS.delay(naps), left))

    def _try_claim(self, limit: int) -> list[Delivery]:
        with self._lock:
            conn = self._live_conn()
            try:
                self._housekeeping(conn)
                room = min(limit, self.prefetch - len(self._held))
                if room <= 0:
                    return []
                # data_version changes only when another connection commits: an idle poll is
                # then one cheap pragma, not a write transaction on the shared file. A delayed
                # message coming due commits nothing, so its due time is watched for too.
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                due = self._next_due is not None and time.time() >= self._next_due
                if not self._dirty and not due and version == self._seen_version:
                    return []
                rows = self._claim(conn, room)
                self._next_due = self._first_due(conn)
            except sqlite3.Error as exc:
                raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc
            # a full claim may have left more behind; a short one saw everything up to `version`
            self._dirty, self._seen_version = len(rows) >= room, version
            self._held.update(row[0] for row in rows)
        return [Delivery(queue=q, body=bytes(body), message_id=mid, redelivered=bool(redelivered),
                         tag=EmbeddedTag(self.id, rid), headers=json.loads(headers))
                for rid, q, body, mid, headers, redelivered in sorted(rows)]

    def _claim(self, conn: sqlite3.Connection, room: int) -> list[tuple]:
        # the oldest `room` ready rows over all queues, each queue read in index order, skipping
        # delayed rows not yet due; a claimed row's delay is spent (a nack does not delay it again)
        now = time.time()
        per_queue = " UNION ALL ".join(
            "SELECT id FROM (SELECT id FROM messages WHERE state = 'ready' AND queue = ? "
            "AND (ready_at IS NULL OR ready_at <= ?) ORDER BY id LIMIT ?)"
            for _ in self.queues)
        params = [p for q in self.queues for p in (q, now, room)]
        return conn.execute(
            "UPDATE messages SET state = 'unacked', consumer = ?, lease_until = ?, ready_at = NULL "
            f"WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY id LIMIT ?) "
            "RETURNING id, queue, body, message_id, headers, redelivered",
            [self.id, now + self.lease, *params, room]).fetchall()

    def _first_due(self, conn: sqlite3.Connection) -> float | None:
        """When the earliest delayed message of our queues comes due (the partial index answers)."""
        return conn.execute(f"SELECT min(ready_at) FROM messages WHERE ready_at IS NOT NULL "
                            f"AND queue IN ({_marks(len(self.queues))})", self.queues).fetchone()[0]

    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        """Renew our leases every third of a lease; release dead consumers' work every second."""
        mono, now = time.monotonic(), time.time()
        if mono - self._renewed >= self.lease / 3:
            with _Transaction(conn):
                if not conn.execute("UPDATE consumers SET heartbeat_until = ? WHERE id = ?",
                                    (now + self.lease, self.id)).rowcount:
                    # our registration was reclaimed (this process stalled past its lease, or the
                    # clock was stepped): its work went back to ready, and every claim it made from
                    # now on would be released within a second. Reopened, it registers afresh.
                    raise ConnectionClosed(f"embedded queue {self.path}: consumer {self.id} expired")
                held = conn.execute("UPDATE messages SET lease_until = ? WHERE consumer = ? AND state = 'unacked' "
                                    "RETURNING id", (now + self.lease, self.id)).fetchall()
            lost = self._held - {row[0] for row in held}
            if lost:
                log.warning("consumer %s lost %d delivery(ies) to lease expiry", self.id, len(lost))
                self._held -= lost
            self._renewed = mono
        if mono - self._reclaimed >= RECLAIM_INTERVAL_S:
            if _reclaim(conn, now, self.host):
                self._dirty = True
            self._reclaimed = mono

    def _live_conn(self) -> sqlite3.Connection:
        if self.closed:
            raise ConnectionClosed(f"embedded queue {self.path}: consumer is closed")
        return self._conn

    def _settle(self, deliveries: Sequence[Delivery], sql: str, params: tuple = ()) -> None:
        rows = [d.tag.row for d in deliveries
                if isinstance(d.tag, EmbeddedTag) and d.tag.consumer == self.id]
        if not rows:
            return
        with self._lock:
            if self.closed:
                return  # closing already gave them back
            try:
                with _Transaction(self._conn) as conn:
                    for chunk in _chunks(rows):
                        conn.execute(sql.format(marks=_marks(len(chunk))), (*params, self.id, *chunk))
            except sqlite3.Error as exc:
                raise ConnectionClosed(f"embedded queue {self.path}: {exc}") from exc
            self._held.difference_update(rows)
            self._dirty = True

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(deliveries, "DELETE FROM messages WHERE state = 'unacked' AND consumer = ? AND id IN ({marks})")

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        self._settle(deliveries, "UPDATE messages SET state = 'ready', consumer = NULL, lease_until = NULL, "
                                 "redelivered = 1 WHERE state = 'unacked' AND consumer = ? AND id IN ({marks})")

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning("dead-lettering message %s from queue %s: %s", delivery.message_id, delivery.queue, reason)
        self._settle([delivery], "UPDATE messages SET state = 'dead', consumer = NULL, lease_until = NULL, "
                                 "dead_reason = ?, dead_at = ? "
                                 "WHERE state = 'unacked' AND consumer = ? AND id IN ({marks})",
                     (str(reason)[:MAX_REASON_CHARS], time.time()))

    def close(self) -> None:
        """Give back every unsettled delivery (redelivered) and leave the consumers table."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                with _Transaction(self._conn) as conn:
                    conn.execute("UPDATE messages SET state = 'ready', consumer = NULL, lease_until = NULL, "
                                 "redelivered = 1 WHERE state = 'unacked' AND consumer = ?", (self.id,))
                    conn.execute("DELETE FROM consumers WHERE id = ?", (self.id,))
            except sqlite3.Error as exc:
                # the lease and the pid check give them back later
                log.warning("consumer %s could not give back its deliveries: %s", self.id, exc)
            finally:
                self._conn.close()
                self._held.clear()
