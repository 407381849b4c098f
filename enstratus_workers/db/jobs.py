"""The provisioning database's job table: submit, relay (the outbox), record outcomes.

Writes on the hot path are batched: the publisher relays up to ``publisher.batch`` pending jobs in
one transaction, and the subscriber records a whole batch of outcomes in one UPDATE. Every status
change is guarded by the status it expects, so a redelivered or duplicated message can never
overwrite an outcome that is already recorded.

One owner per attempt. The row is the truth and a message only points at it, so who may write
attempt *n* of a job is decided by the row alone:

The rule for one row as read is ``lifecycle.attempt_verdict``; the SQL guard of ``_case_update``
is the same rule for a batch of writes.

- Attempt *n* is **open** while the row reads ``pending`` or ``queued`` at ``attempts = n - 1``
  (the outbox relays it as attempt *n*; the publisher marks it queued only after the broker
  confirmed, so a delivery can arrive while it still reads pending). The first subscriber to
  write a mark (``mark_started``) or an outcome (``record_outcomes``) for an open attempt owns
  it: the row then carries ``attempts = n`` and ``owner`` = that subscriber process's token
  (name, host, pid and a random part: a restarted process is a new owner).
- Attempt *n* is **held** while the row reads ``running`` at ``attempts = n``: only its owner's
  mark or outcome applies. Another subscriber may take it over (``take_over``: a compare-and-set
  of the owner) only once the owner's heartbeat expired; so does stuck-job recovery, which makes
  the row pending again at ``attempts = n``.
- Anything else is **closed** for attempt *n*: an outcome recorded (terminal), a retry recorded
  (``pending`` at ``attempts = n``: open for *n + 1* only), a later attempt. A closed attempt
  takes no mark and no outcome.
- A **cancelled** job (``db/cancels.py``) takes no outcome of any attempt, with one exception:
  a job cancelled while pending or queued whose attempt *n* a subscriber had already handed to
  a worker takes that attempt's own ``cancelled`` outcome once (what its compensation cleaned
  up), not counted again; it then reads ``attempts = n`` and is closed to it too.
- A **deferred** attempt (``errors.Deferred``) leaves the row ``pending`` at ``attempts = n - 1``
  with ``not_before_ms`` set: the outbox relays attempt *n* again, held back until then.

So two copies of one message (a publisher killed between publish and commit, a broker
redelivery) cannot both record, and a stale owner that wakes up after a takeover or a recovery
finds its writes refused. ``record_outcomes`` reads the rows back in the same transaction and
returns the outcomes that took effect: only those get an analytics event.

Totals that survive pruning (schema version 3). Finished rows are deleted once old
(``db/retention.py``), yet every count of jobs by status must go on counting them, and a scrape
or a page refresh must cost the same after a month as after a minute. So the statements here
that move a job into or out of a finished status also add to ``enstratus_job_total``, in the
same transaction: one more statement per outcome chunk (not per row), the increments counted
in Python from the outcomes that took effect. Unfinished jobs are counted from their rows:
they are only those in flight, found through the status index. Counting pruned rows instead
("pruned totals" added to live counts) would leave every count a GROUP BY over all the rows
retention keeps: weeks of them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import sqlalchemy as sa

from ..clock import now_ms  # also db.now_ms, for the callers of old
from ..errors import DatabaseError
from ..jobs import lifecycle
from ..jobs.fairshare import FairShare
from ..jobs.values import Outcome, Started  # noqa: F401 - the store's own vocabulary
from . import cancels, driver, job_outcomes, outbox, packed, retry, schema
from .group_commit import GroupCommit
from .job_outcomes import _add_totals, _chunks
from .outbox import Relayed, RelayPass  # noqa: F401 - Relayed: the relay's vocabulary, imported from here of old
from .retry import retried
from .schema import job_pruned as P
from .schema import job_totals as TOTALS
from .schema import jobs as T

_INSERT_COLUMNS = ("action", "arguments", "queue", "status", "attempts", "max_attempts",
                   "idempotency_key", "created_timestamp", "account")
# attempts is always 0 for a new job: inlined, the rest bound ({True: SQLite's ?, False: %s})
_INSERT_ROW = {qmark: f"({', '.join('0' if c == 'attempts' else ('?' if qmark else '%s') for c in _INSERT_COLUMNS)})"
               for qmark in (True, False)}
_INSERT_HEAD = f"INSERT INTO enstratus_job ({', '.join(_INSERT_COLUMNS)}) VALUES "
_INSERT_SQL = {qmark: _INSERT_HEAD + _INSERT_ROW[qmark] for qmark in (True, False)}
#: Jobs per multi-row ``INSERT ... RETURNING`` (``JobStore._insert``): 8 bound values each, well
#: under an older SQLite's 999 bound parameters per statement.
RETURNING_ROWS = 100


def _insert_values(job: NewJob, created_ms: int) -> tuple:
    """A new job's bound values, in ``_INSERT_COLUMNS`` order (attempts, always 0, is inlined)."""
    return (job.action, job.arguments, job.queue, schema.PENDING, job.max_attempts, job.idempotency_key,
            created_ms, job.account)


def _insert_returning_sql(qmark: bool, rows: int) -> str:
    return _INSERT_HEAD + ", ".join([_INSERT_ROW[qmark]] * rows) + " RETURNING job_id"


def _returns_ids(conn) -> bool:
    """Whether this server answers ``INSERT ... RETURNING`` (MariaDB 10.5+, SQLite 3.35+; not MySQL)."""
    dialect = conn.dialect
    if dialect.name == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 35)
    return bool(getattr(dialect, "is_mariadb", False)) and (dialect.server_version_info or ()) >= (10, 5)


@dataclass(frozen=True)
class Job:
    job_id: int
    action: str
    arguments: str            # JSON text, exactly as submitted
    queue: str
    status: str
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    created_timestamp: int
    queued_timestamp: int | None
    start_timestamp: int | None
    end_timestamp: int | None
    worker: str | None
    result: str | None        # JSON text
    error: str | None
    owner: str | None = None  # the subscriber process holding the current attempt
    cancel_requested_ms: int | None = None   # when a cancel was asked for (lifecycle.cancel_verdict)
    not_before_ms: int | None = None         # a deferred job is relayed no sooner than this
    deferrals: int = 0                       # how often its actions deferred it (errors.Deferred)
    account: str | None = None  # the tenant the job is for; None: no account

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["arguments"] = _loads_or_text(self.arguments)
        d["result"] = _loads_or_text(self.result) if self.result is not None else None
        return d


#: ``get``'s read: the row's columns in ``Job``'s order, as driver SQL (``get`` is on every
#: waited job's path: ``wait_for``, ``submit --wait``, the job page), a ``Job`` made by position
_GET_COLUMNS = ", ".join(Job.__dataclass_fields__)


def _loads_or_text(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


@dataclass(frozen=True)
class NewJob:
    action: str
    arguments: str            # JSON text
    queue: str
    max_attempts: int
    idempotency_key: str | None = None
    account: str | None = None    # validated by jobs/submit.py (limits.ACCOUNT_RULE)


class DeliveryRow(NamedTuple):
    """What the subscriber needs of a job's row to decide whether a delivery of it may run."""

    job_id: int
    action: str
    arguments: str            # JSON text
    status: str
    attempts: int
    max_attempts: int
    owner: str | None
    cancel_requested_ms: int | None = None   # set: only the compensation of the action may run
    account: str | None = None               # the tenant the job is for (pauses)

    def verdict(self, attempt: int, me: str) -> str:
        """``run`` (attempt open, or held by ``me``), ``foreign`` (held by another owner: it
        may be taken over only once that owner's heartbeat expired) or ``stale`` (closed)."""
        return lifecycle.attempt_verdict(self.status, self.attempts, self.owner, attempt, me)


#: the delivery check's read: the row's columns in ``DeliveryRow``'s order
_DELIVERY_COLUMNS = ", ".join(DeliveryRow._fields)


class StuckAttempt(NamedTuple):
    """A running or queued job as stuck-job recovery reads it: whether it is lost is decided on
    this value, and the row is changed only if it still reads so (``JobStore.recover``)."""

    job_id: int
    status: str               # running or queued
    since_ms: int             # start_timestamp (running) or queued_timestamp (queued)
    attempts: int
    max_attempts: int
    queue: str
    worker: str | None
    owner: str | None
    cancel_requested_ms: int | None = None   # a cancel was requested: recovery ends it cancelled


_SINCE = {schema.RUNNING: T.c.start_timestamp, schema.QUEUED: T.c.queued_timestamp}



class JobStore:
    """All reads and writes of ``enstratus_job``. Safe to share between threads (pooled engine)."""

    def __init__(self, engine: sa.Engine, on_pending: Callable[[], None] | None = None,
                 on_recorded: Callable[[Iterable[int]], None] | None = None,
                 on_cancel: Callable[[], None] | None = None,
                 on_room: Callable[[], None] | None = None):
        self.engine = engine
        # called after every commit that made a job pending: wakes the publishers (jobs/wakeup.py)
        self._on_pending = on_pending or (lambda: None)
        # called after a commit that only made room in a queue's window (a job marked running or
        # finished, none made pending): a room ring, which a publisher with nothing held back
        # lets go (jobs/wakeup.py); without one, a plain ring
        self._on_room = on_room or self._on_pending
        # called with the jobs a commit finished (wakes ``submit --wait`` and the like, naming
        # them: a waiter reads its row only if its job is among them, jobs/wakeup.py)
        self._on_recorded = on_recorded or (lambda job_ids: None)
        # called after a cancel (wakes this host's subscribers: the owner looks for it at once)
        self._on_cancel = on_cancel or (lambda: None)
        # a group whose commit was lost may be stored: its jobs are not written again one by one
        self._groups: GroupCommit[NewJob, tuple[int, int]] = GroupCommit(
            self._insert, retry_alone=lambda exc: retry.verdict(exc) is not retry.Verdict.AMBIGUOUS)

    def wake_publishers(self) -> None:
        """Ring this host's publishers (after a commit that gave them work, e.g. a resume)."""
        self._on_pending()

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, job: NewJob) -> tuple[Job, bool]:
        """Insert a pending job; return (job, created). A known idempotency key returns the first job.

        Without a key, concurrent submits of this process share a transaction (``group_commit``);
        a lone one is written at once. The job is answered from what was written, not read back.
        A conflict or a lost writer node is retried (``db/retry.py``); a connection lost at the
        COMMIT is retried only for a keyed submit, which finds its job if the commit happened.
        """
        if not job.idempotency_key:
            job_id, created_ms = self._groups.run(job)
            return _pending_job(job, job_id, created_ms), True
        return self._submit_keyed(job)

    @retried(idempotent=True)
    def _submit_keyed(self, job: NewJob) -> tuple[Job, bool]:
        existing = self.by_idempotency_key(job.idempotency_key)
        if existing:
            return existing, False
        try:
            ((job_id, created_ms),) = self._insert([job])
        except sa.exc.IntegrityError:
            existing = self.by_idempotency_key(job.idempotency_key)
            if existing:      # lost a race with another submit of the same key
                return existing, False
            raise
        return _pending_job(job, job_id, created_ms), True

    def submit_jobs(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Insert jobs without idempotency keys in one transaction; the jobs, with their ids."""
        if any(j.idempotency_key for j in new_jobs):
            raise ValueError("submit_jobs takes jobs without idempotency keys; submit() each keyed one")
        return [_pending_job(j, job_id, created_ms)
                for j, (job_id, created_ms) in zip(new_jobs, self._insert(new_jobs))]

    @retried()
    def submit_many(self, new_jobs: Sequence[NewJob]) -> int:
        """Insert many pending jobs in one transaction (bulk API; no idempotency-key lookup)."""
        if not new_jobs:
            return 0
        with self.engine.begin() as conn:
            conn.execute(T.insert(), [self._row(j) for j in new_jobs])
        self._on_pending()
        return len(new_jobs)

    @retried()
    def _insert(self, new_jobs: Sequence[NewJob]) -> list[tuple[int, int]]:
        """One transaction: (job id, created ms) per job, in order.

        Where the server says in one statement which id each row got (``INSERT ... RETURNING``:
        MariaDB 10.5+, SQLite 3.35+), one multi-row INSERT per ``RETURNING_ROWS`` jobs: the ids
        one statement gets rise in the order of its rows (InnoDB's auto-increment is monotonic
        within a statement in every lock mode, though not always consecutive; SQLite's rowids
        rise), so sorted they are the rows' ids in order. Elsewhere (MySQL) one single-row INSERT
        per job, the only one that says which id it got there, as driver SQL, which costs less per
        row than building it. Either way what makes it cheap is the one commit for all of them;
        the one round trip per batch instead of per job is what a group of the admin API's
        one-at-a-time submits (``admin/submitter.py``) then waits for.
        """
        if not new_jobs:
            return []
        qmark = self.engine.dialect.paramstyle == "qmark"
        out = []
        with self.engine.begin() as conn:
            if len(new_jobs) > 1 and _returns_ids(conn):
                for chunk in _chunks(new_jobs, RETURNING_ROWS):
                    created = now_ms()
                    params = tuple(v for j in chunk for v in _insert_values(j, created))
                    rows = conn.exec_driver_sql(_insert_returning_sql(qmark, len(chunk)), params)
                    ids = sorted(int(r[0]) for r in rows)
                    if len(ids) != len(chunk):   # never seen; a wrong id per job would be worse than none
                        raise DatabaseError(f"INSERT ... RETURNING gave {len(ids)} ids for {len(chunk)} rows")
                    out += [(job_id, created) for job_id in ids]
            else:
                for j in new_jobs:
                    created = now_ms()
                    ran = driver.execute(conn, _INSERT_SQL[qmark], _insert_values(j, created))
                    out.append((int(ran.lastrowid), created))
        self._on_pending()
        return out

    @staticmethod
    def _row(job: NewJob) -> dict:
        return dict(action=job.action, arguments=job.arguments, queue=job.queue,
                    status=schema.PENDING, attempts=0, max_attempts=job.max_attempts,
                    idempotency_key=job.idempotency_key, created_timestamp=now_ms(), account=job.account)

    # -- reading (run again on a lost writer node, as a read may always be) ---------------------
    @retried(idempotent=True)
    def get(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            rows = packed.select(conn, _GET_COLUMNS, f"FROM enstratus_job WHERE job_id = {int(job_id)}")
        return Job(*rows[0]) if rows else None

    @retried(idempotent=True)
    def by_idempotency_key(self, key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(T).where(T.c.idempotency_key == key)).mappings().first()
        return Job(**row) if row else None

    @retried(idempotent=True)
    def list(self, status: str | None = None, limit: int = 50) -> list[Job]:
        q = sa.select(T).order_by(T.c.job_id.desc()).limit(limit)
        if status:
            q = q.where(T.c.status == status)
        with self.engine.connect() as conn:
            return [Job(**r) for r in conn.execute(q).mappings()]

    @retried(idempotent=True)
    def counts(self, created_since_ms: int = 0) -> dict[str, int]:
        """``{status: jobs}``, every status present (0 if none), pruned jobs included; with
        ``created_since_ms`` only the jobs created at or after it (the Jobs page's figures since
        a reset).

        Without it: the finished statuses from their totals, the unfinished from their rows
        (status index): a cost that does not grow with history. Since a time: the rows created
        from then on that are still there, plus those pruned since (``enstratus_job_pruned``
        under that same time; see ``db/retention.py``): bounded by what retention keeps.
        """
        with self.engine.connect() as conn:
            if created_since_ms:
                found = dict(conn.execute(sa.select(T.c.status, sa.func.count())
                                          .where(T.c.created_timestamp >= created_since_ms)
                                          .group_by(T.c.status)).all())
                pruned = dict(conn.execute(sa.select(P.c.status, P.c.jobs)
                                           .where(P.c.since_ms == created_since_ms)).all())
            else:
                found = dict(conn.execute(sa.select(T.c.status, sa.func.count())
                                          .where(T.c.status.in_(schema.ACTIVE))
                                          .group_by(T.c.status)).all())
                pruned = dict(conn.execute(sa.select(TOTALS.c.status, TOTALS.c.jobs)).all())
        return {s: int(found.get(s, 0)) + int(pruned.get(s, 0)) for s in schema.STATUSES}

    def active_keys(self, action: str, key_prefix: str) -> list[str]:
        """The idempotency keys starting with ``key_prefix`` (byte for byte) of the jobs of
        ``action`` still pending, queued or running (a schedule's slots still in progress)."""
        pattern = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = sa.select(T.c.idempotency_key).where(T.c.status.in_(schema.ACTIVE), T.c.action == action,
                                                 T.c.idempotency_key.like(pattern, escape="\\"))
        with self.engine.connect() as conn:
            keys = conn.execute(q).scalars().all()
        return [k for k in keys if k.startswith(key_prefix)]

    def delivery_rows(self, job_ids: Iterable[int], conn: sa.Connection | None = None) -> dict[int, DeliveryRow]:
        """The rows of these jobs, by id, in one query (the subscriber's check of a delivery
        batch); a job without a row is absent. Ids must be ints (they are inlined). ``conn``: a
        connection to read on (the subscriber's held one, ``db/held_connection.py``),
        else one from the pool for this read."""
        ids = sorted({int(i) for i in job_ids})
        if conn is None:
            with self.engine.connect() as pooled:
                return _delivery_rows(pooled, ids)
        return _delivery_rows(conn, ids)

    @retried()
    def take_over(self, job_id: int, attempt: int, old_owner: str | None, new: Started) -> bool:
        """Move a running attempt from ``old_owner`` (whose heartbeat expired) to ``new.owner``;
        False if the row changed meanwhile (recorded, recovered, or taken by someone else)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(T.update().where(
                T.c.job_id == job_id, T.c.status == schema.RUNNING, T.c.attempts == attempt,
                _owned_by(old_owner)).values(owner=new.owner, worker=new.worker,
                                   start_timestamp=new.start_ms)).rowcount)

    # -- cancel (db/cancels.py) ----------------------------------------------------------------
    def cancel(self, job_id: int) -> cancels.CancelAnswer:
        """Cancel a job: at once if it has not started, else ask its owner to stop it."""
        answer = cancels.cancel(self.engine, job_id, _add_totals, self.get)
        if answer.verdict == lifecycle.CANCEL_NOW:
            self._on_recorded((job_id,))      # it finished: wake whoever waits for it
        if answer.verdict in (lifecycle.CANCEL_NOW, lifecycle.CANCEL_ASK):
            self._on_cancel()        # a subscriber of this host may hold it (another host's looks in time)
        return answer

    def finished_among(self, job_ids: Iterable[int]) -> set[int]:
        """The jobs of ``job_ids`` that have ended (a terminal status): one read per 500 ids, by
        primary key (the admin API's waits, ``admin/outcome_watch.py``)."""
        ids = sorted({int(i) for i in job_ids})
        found: set[int] = set()
        with self.engine.connect() as conn:
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                found.update(conn.execute(sa.select(T.c.job_id).where(
                    T.c.job_id.in_(chunk), T.c.status.in_(schema.TERMINAL))).scalars())
        return found

    def cancels_among(self, job_ids: Iterable[int]) -> dict[int, tuple[str, int]]:
        """The jobs of ``job_ids`` whose cancel was requested: ``{id: (status, attempts)}``."""
        return cancels.requested_among(self.engine, job_ids)

    # -- stuck-job recovery (publisher) -------------------------------------------------------
    def stuck_running(self, before_ms: int, limit: int = 500) -> list[StuckAttempt]:
        """Up to ``limit`` jobs running since before ``before_ms``, oldest job first."""
        return self._stuck(schema.RUNNING, before_ms, limit)

    def stuck_queued(self, before_ms: int, limit: int = 500) -> list[StuckAttempt]:
        """Up to ``limit`` jobs queued since before ``before_ms``, oldest job first."""
        return self._stuck(schema.QUEUED, before_ms, limit)

    def stuck_cancelling(self, before_ms: int, limit: int = 500) -> list[StuckAttempt]:
        """Up to ``limit`` running jobs whose cancel was requested before ``before_ms``: those
        are stuck once their owner had its grace to stop them, long before their time limit."""
        return self._stuck(schema.RUNNING, None, limit, T.c.cancel_requested_ms < before_ms)

    def running_not_owned_by(self, owners: Iterable[str], limit: int = 500) -> list[StuckAttempt]:
        """Up to ``limit`` running jobs, oldest first, whose owner is none of ``owners`` (the
        live subscribers): their subscriber is gone (a dead host's jobs). Rows without an owner
        (written by an older release) are left to ``stuck_running``'s time rule."""
        return self._stuck(schema.RUNNING, None, limit, T.c.owner.is_not(None),
                           *([T.c.owner.not_in(sorted(owners))] if owners else []))

    @retried(idempotent=True)
    def _stuck(self, status: str, before_ms: int | None, limit: int, *where) -> list[StuckAttempt]:
        """Rows of ``status`` (since before ``before_ms``, when given) that also meet ``where``."""
        since = _SINCE[status]
        q = (sa.select(T.c.job_id, T.c.status, since, T.c.attempts, T.c.max_attempts, T.c.queue,
                       T.c.worker, T.c.owner, T.c.cancel_requested_ms)
             .where(T.c.status == status, *where).order_by(T.c.job_id).limit(limit))
        if before_ms is not None:
            q = q.where(since < before_ms)
        with self.engine.connect() as conn:
            return [StuckAttempt(*r) for r in conn.execute(q)]

    @retried()
    def recover(self, stuck: StuckAttempt, why: str) -> str | None:
        """Put a lost attempt back (``lifecycle.after_lost``: pending, or dead after the last)
        with ``why`` as its error and no owner; return the new status, or None if the row no
        longer reads as ``stuck`` (another publisher recovered it, a subscriber recorded or took
        it over: a running attempt is guarded by its owner too)."""
        after = lifecycle.after_lost(stuck.attempts, stuck.max_attempts, stuck.cancel_requested_ms is not None)
        guards = [T.c.job_id == stuck.job_id, T.c.status == stuck.status,
                  _SINCE[stuck.status] == stuck.since_ms]
        if stuck.status == schema.RUNNING:
            guards.append(_owned_by(stuck.owner))
        with self.engine.begin() as conn:
            changed = conn.execute(T.update().where(*guards).values(
                status=after.status, error=why, attempts=after.attempts, owner=None)).rowcount
            if changed:
                _add_totals(conn, {after.status: 1})
        if changed and after.status == schema.PENDING:
            self._on_pending()
        return after.status if changed else None

    # -- dead jobs -----------------------------------------------------------------------------
    @retried()
    def requeue_dead(self, job_ids: Sequence[int] | None, extra_attempts: int) -> list[Job]:
        """Give dead jobs (the named ones, or all) ``extra_attempts`` more and make them pending.

        The publisher then relays them like any pending job: the database stays the one source
        of truth, and the queue's dead letters are only a mirror the caller purges.
        """
        q = sa.select(T).where(T.c.status == schema.DEAD)
        if job_ids is not None:
            q = q.where(T.c.job_id.in_(list(job_ids)))
        with self.engine.begin() as conn:
            dead = [Job(**r) for r in conn.execute(q.with_for_update()).mappings()]
            redriven = 0
            for j in dead:
                redriven += conn.execute(T.update().where(T.c.job_id == j.job_id, T.c.status == schema.DEAD).values(
                    status=schema.PENDING,
                    max_attempts=lifecycle.redrive_max_attempts(j.attempts, extra_attempts))).rowcount
            _add_totals(conn, {schema.DEAD: -redriven})
        if redriven:
            self._on_pending()
        return dead

    # -- the outbox relay (publisher) ----------------------------------------------------------
    def relay(self, planner: FairShare, batch: int, publish: Callable[[list[Relayed]], None],
              held: sa.Connection | None = None) -> RelayPass:
        """One relay pass (``db/outbox.py``): up to ``batch`` pending jobs, dealt by ``planner``
        (the windows, the accounts' turns, the pauses), published, the confirmed marked queued.
        ``held``: the publisher's own connection (``db/held_connection.py``), else the pool's."""
        return outbox.relay(self.engine, planner, batch, publish, held)

    def relay_pending(self, limit: int, publish: Callable[[list[Relayed]], None]) -> int:
        """A relay pass of up to ``limit`` jobs with no window, the accounts taking turns within
        it (none carried over: the publisher keeps its own ``FairShare``); how many were relayed.
        ``publish`` returns once the broker confirmed, or raises ``PublishError``."""
        return self.relay(FairShare(), limit, publish).relayed

    @retried(idempotent=True)   # guarded: a row given back reads pending, and is not given twice
    def give_back(self, attempts: Sequence[tuple[int, int]]) -> int:
        """Put jobs delivered while paused back in the outbox: each (job id, attempt) whose
        attempt is still open (pending or queued one below it) is made pending at the same
        attempt count, so no attempt is counted; returns how many. Their messages may then be
        acked: the outbox relays the jobs again once they are resumed."""
        given = 0
        with self.engine.begin() as conn:
            for job_id, attempt in attempts:
                given += conn.execute(T.update().where(
                    T.c.job_id == job_id, T.c.status.in_(lifecycle.OPEN), T.c.attempts == attempt - 1,
                ).values(status=schema.PENDING, queued_timestamp=None)).rowcount
        if given:
            self._on_pending()
        return given

    # -- recording (subscriber; db/job_outcomes.py) --------------------------------------------
    def mark_started(self, started: Sequence[Started]) -> None:
        """Mark jobs running, with attempt, worker, owner and start time, where the attempt is
        open or already this owner's (module docstring); any other row is left alone."""
        job_outcomes.mark_chunks(self.engine, started)
        if started:   # a started job leaves its queue's window: the publishers may refill it
            self._on_room()

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write the outcomes, one statement per chunk; return those that took effect.

        An outcome applies only where its attempt is open or its owner's (module docstring):
        never over a recorded outcome, a later attempt, or another owner's attempt. Which ones
        applied is read back in the same transaction: the row then holds the outcome's attempt,
        owner and end time (so a retried write of an outcome that did commit counts once).
        A chunk refused by a conflict or a lost writer node is written again at once
        (``db/retry.py``); raises ``DatabaseError`` if the database cannot be written: the caller
        must then keep the outcomes (and not ack their messages) and try again.
        """
        return self.record_outcomes_with(outcomes)[0]

    def record_outcomes_with(self, outcomes: Sequence[Outcome], also: job_outcomes.Also | None = None
                             ) -> tuple[list[Outcome], set[int]]:
        """``record_outcomes``, running ``also(conn, chunk)`` in each chunk's transaction when
        all its rows took their outcome (``job_outcomes``): the outcomes that took effect, and
        the ``id()`` of those whose chunk committed with ``also``."""
        try:
            applied, joined = job_outcomes.record_chunks(self.engine, outcomes, also)
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseError(f"could not record {len(outcomes)} outcomes: {type(exc).__name__}") from exc
        if applied:
            # a retry or a deferred job is pending again: work for the publishers; a finished
            # job only left its queue's window: room
            if any(o.status == schema.PENDING for o in applied):
                self._on_pending()
            else:
                self._on_room()
            finished = [o.job_id for o in applied if o.status in schema.TERMINAL]
            if finished:     # a retry or a deferral is not what a waiter waits for
                self._on_recorded(finished)
        return applied, joined


def _pending_job(job: NewJob, job_id: int, created_ms: int) -> Job:
    """The row ``_insert`` just wrote, as ``get`` would read it."""
    return Job(job_id=job_id, action=job.action, arguments=job.arguments, queue=job.queue,
               status=schema.PENDING, attempts=0, max_attempts=job.max_attempts,
               idempotency_key=job.idempotency_key, created_timestamp=created_ms,
               queued_timestamp=None, start_timestamp=None, end_timestamp=None, worker=None,
               result=None, error=None, owner=None, account=job.account)


def _owned_by(owner: str | None):
    """The row's owner is ``owner`` (None: a row without one, written by an older release)."""
    return T.c.owner.is_(None) if owner is None else T.c.owner == owner


def _delivery_rows(conn: sa.Connection, ids: list[int]) -> dict[int, DeliveryRow]:
    """``JobStore.delivery_rows`` on ``conn``: at most 1,000 ids a statement."""
    found: dict[int, DeliveryRow] = {}
    for chunk in _chunks(ids, 1000):
        rows = packed.select(conn, _DELIVERY_COLUMNS,
                             f"FROM enstratus_job WHERE job_id IN ({', '.join(map(str, chunk))})")
        found.update((r[0], DeliveryRow(*r)) for r in rows)
    return found
