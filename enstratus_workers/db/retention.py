"""Retention: finished jobs and old events are deleted once older than their period.

What is deleted, and when (``worker.properties``, seconds; 0 keeps forever):

- jobs ``succeeded``, ``failed``, ``dead`` and ``cancelled`` finished ``retention.succeeded`` /
  ``retention.failed`` / ``retention.dead`` / ``retention.cancelled`` ago (finished: the end of
  the last attempt or of the cancel, or for a job recovery ended, the last time its row knows
  of); never a pending, queued or running job;
- analytics events (per attempt, and of servers) recorded ``retention.events`` ago, and the
  per-minute figures of the charts (``enstratus_action_minute``) of minutes that long ago, but
  never those of the last two hours (the charts show the last one);
- rows of the audit log of operator actions (``db/audit.py``) written ``retention.audit`` ago.

Counts survive it: the job and action totals are kept by the writes that change them
(``db/jobs.py``, ``db/analytics.py``) and are not pruned. A pass ends by folding the action
totals past ``analytics.ACTIONS_KEPT`` names into the ``(other)`` rows (``analytics.fold_totals``):
summed, not lost, and bounded however many names clients invent. The one figure that is a count
of rows, the Jobs page's "created since the reset", gets what is pruned of those rows added
to ``enstratus_job_pruned`` under the reset time in force, in the same transaction as the
DELETE. (A job pruned before a reset was created before it, so a later reset never needs it.)

It never stalls the hot path: rows go in batches of at most ``BATCH`` by primary key, each
its own short transaction (read the next window of ids through an index, then lock, delete and
count the expired ones by primary key), and the caller pauses between batches. One daemon of
the fleet prunes at a time: it holds the lease row ``enstratus_lease('retention')`` (a
compare-and-set with an expiry, the same on SQLite and MySQL), renewed before every batch; a
pruner that lost it (it stalled past the lease, another took over) stops at its next batch.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..clock import now_ms
from ..jobs.lifecycle import CANCELLED, DEAD, FAILED, SUCCEEDED
from .analytics import fold_totals
from .server_clock import now_ms_for
from .instances import InstanceStore
from .schema import MINUTE_MS, RETENTION_LEASE
from .schema import job_pruned as P
from .schema import leases as L

log = logging.getLogger(__name__)

#: rows per DELETE: a transaction of a few ms that holds no lock a relay or a record waits on
BATCH = 500
#: how long a pruner's lease lasts past its last renewal: far longer than one batch takes
LEASE_S = 60.0
#: per-minute figures are kept at least this long (the status page's charts show an hour)
MINUTES_KEPT_S = 2 * 3600.0

# When a finished row finished: the end of its last attempt; a job that recovery ended dead has
# no end time, and the latest time its row knows of is when it started (or was queued).
_FINISHED = "COALESCE(end_timestamp, start_timestamp, queued_timestamp, created_timestamp)"


@dataclass(frozen=True)
class Periods:
    """Retention periods in seconds; 0 keeps forever."""

    succeeded: float
    failed: float
    dead: float
    events: float
    cancelled: float = 0.0    # 0 here (a value built by hand): kept forever, as before it existed
    audit: float = 0.0        # the same

    @classmethod
    def of(cls, settings) -> Periods:
        """From a settings group holding ``retention_*`` (``Settings.pinger``)."""
        return cls(settings.retention_succeeded, settings.retention_failed, settings.retention_dead,
                   settings.retention_events, settings.retention_cancelled, settings.retention_audit)

    def shortest(self) -> float | None:
        """The shortest period that prunes anything, or None if all keep forever."""
        kept = [p for p in (self.succeeded, self.failed, self.dead, self.events, self.cancelled, self.audit) if p > 0]
        return min(kept) if kept else None


@dataclass
class Pass:
    """One pass over every table, a batch at a time: ``Pruner.step`` advances it."""

    now: int
    since: int                        # the Jobs page's reset time in force at the pass's start
    todo: list[tuple[str, str, int]]  # (table, status or "", cutoff ms), the current one first
    after: int = 0                    # the last primary key looked at in the current table
    deleted: dict[str, int] = field(default_factory=dict)


def lease_holder(name: str, host: str) -> str:
    """A holder token unique to this process (a restarted process is a new holder)."""
    return f"{name}@{host}:{os.getpid()}:{secrets.token_hex(4)}"


class Pruner:
    """Deletes what retention no longer keeps, ``BATCH`` rows per ``step``, under the lease.

    ``provisioning`` holds the jobs, the audit log and the lease, ``analytics`` the events (the
    same engine when both live in one database). Not thread-safe: one caller drives it.
    """

    def __init__(self, provisioning: sa.Engine, analytics: sa.Engine, periods: Periods, holder: str,
                 *, batch: int = BATCH, lease_s: float = LEASE_S):
        self.provisioning, self.analytics = provisioning, analytics
        self.periods, self.holder = periods, holder
        self.batch, self.lease_s = batch, lease_s
        self.current: Pass | None = None
        self.deleted: dict[str, int] = {}     # rows deleted so far, per table or job status
        self.last_pass: dict[str, int] = {}   # rows the last finished pass deleted
        self.passes = 0                        # passes this pruner finished (holding the lease)

    # -- the lease -----------------------------------------------------------------------------
    def acquire(self, now: int | None = None) -> bool:
        """Take or renew the lease; False while another holder's has not expired. Timed on the
        database server's clock where it has one (``db/server_clock.py``): a host whose clock
        ran ahead would take a live holder's lease, and one behind keep its own too long."""
        now = now_ms_for(self.provisioning, now)
        with self.provisioning.begin() as conn:
            return bool(conn.execute(L.update().where(
                L.c.name == RETENTION_LEASE, sa.or_(L.c.expires_ms < now, L.c.holder == self.holder))
                .values(holder=self.holder, expires_ms=now + int(self.lease_s * 1000))).rowcount)

    def release(self) -> None:
        with self.provisioning.begin() as conn:
            conn.execute(L.update().where(L.c.name == RETENTION_LEASE, L.c.holder == self.holder)
                         .values(holder=None, expires_ms=0))

    # -- passes --------------------------------------------------------------------------------
    def step(self) -> bool:
        """Delete one batch; True if there is more to do in this pass (call again after a
        pause), False when the pass is over (or the lease is another's: it is theirs to do).
        A new pass starts with the first call after the last one ended."""
        if self.current is None:
            if not self.acquire():
                return False
            self.current = self._start(now_ms())
        elif not self.acquire():
            log.warning("retention: the lease passed to another pruner; leaving the pass to it")
            self.current = None
            return False
        p = self.current
        while p.todo:
            table, status, cutoff = p.todo[0]
            found, more = (self._jobs_batch(p, status, cutoff) if table == "enstratus_job"
                           else self._minutes_batch(p, cutoff) if table == "enstratus_action_minute"
                           else fold_totals(self.analytics, batch=self.batch) if table == "enstratus_action_total"
                           else self._events_batch(p, table, cutoff))
            if found:
                key = status or table
                p.deleted[key] = p.deleted.get(key, 0) + found
                self.deleted[key] = self.deleted.get(key, 0) + found
            if not more:
                p.todo.pop(0)
                p.after = 0
            if found or more:
                return True
        self._finish(p)
        return False

    def run_pass(self, pause=lambda: None) -> dict[str, int]:
        """A whole pass, ``pause()`` between batches; the rows deleted per table or status."""
        while self.step():
            pause()
        return dict(self.last_pass)

    def abandon(self) -> None:
        """Drop the pass under way (a batch failed): the next ``step`` starts a new one. The
        lease stays this holder's until it expires, so the next pass can take it at once."""
        self.current = None

    def close(self) -> None:
        """Give the lease back mid-pass (a stopping daemon), so another need not wait it out."""
        if self.current is not None:
            self.current = None
            self.release()

    def _start(self, now: int) -> Pass:
        todo = [("enstratus_job", status, now - int(period * 1000))
                for status, period in ((SUCCEEDED, self.periods.succeeded), (FAILED, self.periods.failed),
                                       (DEAD, self.periods.dead), (CANCELLED, self.periods.cancelled))
                if period > 0]
        if self.periods.events > 0:
            cutoff = now - int(self.periods.events * 1000)
            todo += [("enstratus_job_event", "", cutoff), ("enstratus_server_event", "", cutoff)]
            # the charts draw the last hour of these, however short the events' period
            todo.append(("enstratus_action_minute", "", now - int(max(self.periods.events, MINUTES_KEPT_S) * 1000)))
        if self.periods.audit > 0:
            todo.append(("enstratus_audit", "", now - int(self.periods.audit * 1000)))
        todo.append(("enstratus_action_total", "", 0))   # folded, not pruned: no cutoff
        return Pass(now=now, since=self._since(), todo=todo)

    def _finish(self, p: Pass) -> None:
        self.current = None
        self.passes += 1
        self.last_pass = p.deleted
        with self.provisioning.begin() as conn:
            # rows kept for an earlier reset are read no more: the page asks for the latest only
            conn.execute(P.delete().where(P.c.since_ms < p.since))
        self.release()
        if any(p.deleted.values()):
            log.info("retention: pruned %s", ", ".join(f"{n} {k}" for k, n in sorted(p.deleted.items()) if n))

    def _since(self) -> int:
        try:
            return InstanceStore(self.provisioning, ensure=False).stats_since()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return 0   # no admin tables yet: no reset was ever made

    # -- the batches ---------------------------------------------------------------------------
    def _jobs_batch(self, p: Pass, status: str, cutoff: int) -> tuple[int, bool]:
        """Delete the expired rows among the next ``batch`` of ``status`` by id: (deleted, more).

        The window is read through the (status, job_id) index. The pass goes on while a window
        holds rows created before the cutoff (a row created later cannot have finished before
        it), so rows kept because they finished late are looked at, never the recent ones.
        """
        with self.provisioning.connect() as conn:
            window = conn.exec_driver_sql(
                f"SELECT job_id, created_timestamp, {_FINISHED} FROM enstratus_job "
                f"WHERE status = '{status}' AND job_id > {int(p.after)} ORDER BY job_id LIMIT {int(self.batch)}"
            ).all()
        if not window:
            return 0, False
        p.after = window[-1][0]
        more = len(window) == self.batch and window[-1][1] < cutoff
        expired = [r[0] for r in window if r[2] < cutoff]
        if not expired:
            return 0, more
        ids = ", ".join(str(int(i)) for i in expired)
        guard = f"job_id IN ({ids}) AND status = '{status}' AND {_FINISHED} < {int(cutoff)}"
        with self.provisioning.begin() as conn:
            lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE
            # locked by primary key, so a redrive of a dead job waits or wins, never half-counted
            rows = conn.exec_driver_sql(
                f"SELECT job_id, created_timestamp FROM enstratus_job WHERE {guard}{lock}").all()
            if not rows:
                return 0, more
            conn.exec_driver_sql(
                f"DELETE FROM enstratus_job WHERE job_id IN ({', '.join(str(int(r[0])) for r in rows)})")
            since_reset = sum(1 for r in rows if r[1] >= p.since) if p.since else 0
            if since_reset:
                _add_pruned(conn, status, p.since, since_reset)
        return len(rows), more

    def _events_batch(self, p: Pass, table: str, cutoff: int) -> tuple[int, bool]:
        """Delete the expired events (or audit rows) among the next ``batch`` by id: (deleted,
        more). They are written in time order, so the first window with none expired ends the
        table."""
        engine, key, when = _LOGS[table]
        engine = self.provisioning if engine == "provisioning" else self.analytics
        with engine.connect() as conn:
            window = conn.exec_driver_sql(
                f"SELECT {key}, {when} FROM {table} WHERE {key} > {int(p.after)} "
                f"ORDER BY {key} LIMIT {int(self.batch)}").all()
        expired = [r[0] for r in window if r[1] < cutoff]
        if not expired:
            return 0, False
        p.after = window[-1][0]
        with engine.begin() as conn:
            deleted = conn.exec_driver_sql(
                f"DELETE FROM {table} WHERE {key} IN ({', '.join(str(int(i)) for i in expired)}) "
                f"AND {when} < {int(cutoff)}").rowcount
        return deleted, len(window) == self.batch

    def _minutes_batch(self, p: Pass, cutoff: int) -> tuple[int, bool]:
        """Delete the per-minute figures of the oldest ``batch`` rows' minutes that ended before
        the cutoff: (deleted, more). A minute holds a row per (action, outcome), so a batch may
        take a few rows more than ``batch`` to end on a whole minute."""
        with self.analytics.connect() as conn:
            minutes = conn.exec_driver_sql(
                f"SELECT minute_ms FROM enstratus_action_minute WHERE minute_ms < {int(cutoff) - MINUTE_MS} "
                f"ORDER BY minute_ms LIMIT {int(self.batch)}").scalars().all()
        if not minutes:
            return 0, False
        with self.analytics.begin() as conn:
            deleted = conn.exec_driver_sql(
                f"DELETE FROM enstratus_action_minute WHERE minute_ms <= {int(minutes[-1])}").rowcount
        return deleted, len(minutes) == self.batch


#: the time-ordered logs pruned by age: table -> (database, primary key, time column)
_LOGS = {"enstratus_job_event": ("analytics", "event_id", "event_timestamp"),
         "enstratus_server_event": ("analytics", "event_id", "event_timestamp"),
         "enstratus_audit": ("provisioning", "audit_id", "at_ms")}


def _add_pruned(conn, status: str, since: int, n: int) -> None:
    """Count ``n`` pruned jobs of ``status`` created since the reset at ``since``."""
    key = (P.c.status == status) & (P.c.since_ms == since)
    if not conn.execute(P.update().where(key).values(jobs=P.c.jobs + n)).rowcount:
        conn.execute(P.insert().values(status=status, since_ms=since, jobs=n))
