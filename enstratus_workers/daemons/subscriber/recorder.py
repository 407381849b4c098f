"""Writes what the subscriber must record before it may ack: running marks, outcomes, events.

It runs in its own thread, so the subscriber's loop keeps feeding the workers while a batch is
being written (a database round trip is milliseconds; a no-op action is microseconds).
Outcomes are written to the provisioning DB, then their events to the analytics DB, and only
then are their deliveries handed to ``on_recorded`` for acking. If a database cannot be
written, everything stays buffered (and unacked) and is retried with backoff: an outcome is
never acked unrecorded, and the status guard in ``JobStore.record_outcomes`` keeps a retried
write from counting twice.

No single item can hold up the others (DESIGN.md, "Jobs and messages"). A result too large is
cut before it is written; a write the database refuses is narrowed down (``_narrow``) to the
items it refuses alone: such an outcome is recorded as a failure with the database's reason, such
an event is logged, counted and dropped, and the rest are written and acked as usual. A database
that refuses everything is an outage, not a bad item, and is waited out as above.

Each outcome chunk also adds to the job totals, and each event chunk to the action totals, in
the same transaction (``JobStore.record_outcomes``, ``EventStore.record``: one statement per
chunk): the counts the pages and the metrics read survive retention's pruning.

When both databases are one (``provisioning.url`` = ``analytics.url``, as a single MariaDB
usually is), an outcome chunk and its events are one transaction (``db/job_outcomes.py``): one
commit per batch instead of two. Should that transaction fail, the chunk is written again the
two-step way, so an event the database refuses still only drops that event (above).

Jobs are marked ``running`` only once they have run for ``mark_running_after`` seconds: a job
that ends sooner gets one write (its outcome, with its start time), not two.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import sqlalchemy as sa

from enstratus_workers.backoff import Backoff
from enstratus_workers.db import Databases, Event, Outcome, Started, retry
from enstratus_workers.db.analytics import insert_events
from enstratus_workers.db.schema import FAILED
from enstratus_workers.jobs import pathtrace
from enstratus_workers.jobs.lifecycle import event_outcome
from enstratus_workers.mq.base import Delivery

log = logging.getLogger(__name__)

#: Largest result (JSON text, UTF-8 bytes) recorded. The column is MEDIUMTEXT (16 MiB) and
#: MariaDB's default max_allowed_packet is 16 MiB for the whole statement: a result near either
#: makes the server drop the connection, which looks like an outage and would stall every job
#: behind it. A result is a job's answer, not a data channel: 1 MiB leaves room for several in
#: one write. A job whose result is larger fails with the size in its error.
RESULT_CAP = 1 << 20
#: Longest error text recorded, in characters: the column is TEXT (65,535 bytes), and 16,000
#: characters of up to 4 UTF-8 bytes each fit. A longer one (a huge traceback) is cut, not
#: refused, so a retryable failure stays retryable.
ERROR_CAP = 16_000
#: Rows and characters of result and error text per outcome write: one transaction of
#: ``JobStore.record_outcomes`` (its chunk), and a statement well under a 16 MiB packet even if
#: the driver's escaping doubles the text.
GROUP_ROWS = 200
GROUP_CHARS = 4 << 20
#: Single items that fail alone, before any write succeeds, taken as a sign that the database
#: refuses everything (an outage) rather than as bad items: bounds what narrowing costs then.
PROBES = 3
#: Delay before write retry n (1 s, doubling to 30 s), jittered: every subscriber of a fleet
#: loses the same database at the same moment, and should not come back in step.
WRITE_BACKOFF = Backoff(first=1.0, cap=30.0, jitter="equal")
#: Retry delay while stopping: the grace period is short, so retry often within it.
STOP_RETRY_S = 0.5
#: Longest the thread sleeps with nothing due: it then looks again, and finds running marks
#: that came meanwhile in time for ``mark_running_after`` (``started`` does not wake it).
IDLE_WAIT_S = 0.5
#: a flush whose outcome write took longer than this was stalled (the process stopped, swapped
#: out): while it stood, another host may have found the attempts finished with no event and
#: written their events itself (``lost_events.py``), so they are looked up before they are written
STALLED_S = 10.0

# MySQL/MariaDB errors that say nothing about the values written (a conflict, a Galera
# certification failure or a node that is not ready, a lost connection: db/retry.py): waited
# out as an outage, never a reason to fail the job.
_OUTAGE_CODES = retry.OUTAGE_CODES


@dataclass
class _Pending:
    outcome: Outcome
    event: Event
    deliveries: list[Delivery]
    dead_reason: str | None = None   # set: the job is dead; its message goes to the dead-letter queue
    replaced: bool = False           # the outcome is already the failure standing in for a refused one
    evented: bool = False            # its event was committed with the outcome (one database)
    # An earlier write of its event may have committed without anyone hearing so: a write lost
    # at its COMMIT (the server stopped then) is an outage here and is written again, and an
    # outcome that reads as written before its rewrite may have gone with its event (one
    # database). Its event is looked up before it is written again (``_write_events``).
    maybe_written: bool = False


@dataclass
class _Narrowed:
    """What a narrowed write did: written (``applied`` of them took effect), refused, held back."""

    ok: list = field(default_factory=list)
    applied: list = field(default_factory=list)
    bad: list = field(default_factory=list)       # (item, reason): refused on its own
    held: list = field(default_factory=list)      # not written: the database is out
    error: str | None = None                      # why it is out


class Recorder:
    def __init__(self, dbs: Databases, batch: int, interval: float,
                 on_recorded: Callable[[list[Delivery]], None] | None = None,
                 mark_running_after: float = 1.0,
                 on_dead: Callable[[Delivery, str], None] | None = None):
        self.dbs = dbs
        self.batch, self.interval = batch, interval
        self.on_recorded = on_recorded
        self.on_dead = on_dead
        self.mark_running_after = mark_running_after
        self._lock = threading.Condition()
        self._started: dict[int, tuple[float, Started]] = {}
        self._outcomes: list[_Pending] = []     # not yet in the provisioning DB
        self._events: list[_Pending] = []       # in the provisioning DB, event not yet written
        self._oldest: float | None = None       # when the oldest unwritten outcome arrived
        self.retry_at = 0.0
        self.failures = 0
        self.recorded = 0
        self.refused = 0        # outcomes the database refused, recorded as failures instead
        self.events_lost = 0    # events the analytics database refused, dropped
        self.stale = 0          # outcomes of attempts already recorded (duplicates), not rewritten
        self._write_error: str | None = None
        self._thread: threading.Thread | None = None
        self.one_database = _one_database(dbs)   # outcomes and their events in one transaction
        self.joined = 0         # outcomes whose event was written in their own transaction
        self._stopping = False
        self._deadline = float("inf")

    # -- feeding (any thread) ------------------------------------------------------------------
    def started(self, s: Started) -> None:
        """A job handed to a worker: its running mark is due ``mark_running_after`` from now.

        This wakes the thread only if the mark could be due before the thread's idle wait ends
        (``IDLE_WAIT_S``). Otherwise the thread finds the mark at its next look, still in time,
        and a wake-up here would buy nothing: it came with every job, right as the worker starts
        its action, a thread woken to compete for the GIL and a core on the job's way (measured:
        bench/README.md, "Idle: what each job costs the machine")."""
        with self._lock:
            if not self._started and self.mark_running_after < IDLE_WAIT_S:
                self._lock.notify()
            self._started[s.job_id] = (time.monotonic(), s)

    def finished(self, outcome: Outcome, event: Event, deliveries: list[Delivery],
                 dead_reason: str | None = None) -> None:
        with self._lock:
            self._started.pop(outcome.job_id, None)   # the outcome row says it all
            self._outcomes.append(_Pending(outcome, event, list(deliveries), dead_reason))
            if self._oldest is None:   # the thread may be asleep with nothing due: set its alarm
                self._oldest = time.monotonic()
                self._lock.notify()
            elif len(self._outcomes) >= self.batch:
                self._lock.notify()

    @property
    def waiting(self) -> int:
        """Outcomes not yet acked: waiting to be written, or written with the event pending (RQ)."""
        with self._lock:
            return len(self._outcomes) + len(self._events)

    @property
    def write_error(self) -> str | None:
        """Why writes keep failing, for the subscriber's heartbeat; None while they succeed.

        One failed attempt is a blip (a database restart drops the pooled connections); from the
        second in a row on, about a second later, the outcomes are stuck and someone should know.
        """
        return self._write_error if self.failures >= 2 else None

    def due_in(self) -> float | None:
        """Seconds until a write is due (0: now), or None when there is nothing to write."""
        with self._lock:
            return self._due_in_locked()

    def _due_in_locked(self) -> float | None:
        now = time.monotonic()
        candidates = []
        if self._outcomes or self._events:
            full = len(self._outcomes) >= self.batch
            candidates.append(0.0 if full or self._oldest is None else self._oldest + self.interval - now)
        if self._started:
            first = min(t for t, _ in self._started.values())
            candidates.append(first + self.mark_running_after - now)
        if not candidates:
            return None
        due = max(0.0, min(candidates))
        return max(due, self.retry_at - now) if self.retry_at > now else due

    # -- writing -------------------------------------------------------------------------------
    def flush(self) -> list[Delivery]:
        """Write what is due; return the deliveries that may now be acked (also given to on_recorded)."""
        with self._lock:
            cutoff = time.monotonic() - self.mark_running_after
            marks = [s for t, s in self._started.values() if t <= cutoff]
            for s in marks:
                del self._started[s.job_id]
            outcomes, self._outcomes = self._outcomes, []
            events, self._events = self._events, []
            self._oldest = None
        if marks:
            done = _narrow(self._write_marks, [marks])
            for s, why in done.bad:
                log.error("could not mark job %d running (%s); its outcome will say it all", s.job_id, why)
            if done.error:
                self._put_back(done.held, outcomes, events)
                self._failed(done.error)
                return []
        began = time.monotonic()
        applied, settled, held, outage = self._write_outcomes([_fit(p) for p in outcomes])
        if time.monotonic() - began > STALLED_S:
            for p in applied:
                p.maybe_written = True
        if applied and pathtrace.on():
            pathtrace.stamp("recorder.written", (p.outcome.job_id for p in applied))
        joined = [p for p in applied if p.evented]
        self.joined += len(joined)
        unevented = events + [p for p in applied if not p.evented]
        done = _narrow(self._write_events, [unevented]) if unevented else _Narrowed()
        done.ok[:0] = joined
        for p, why in done.bad:
            self.events_lost += 1
            log.error("dropped the event of job %d attempt %d (%s); its outcome is recorded",
                      p.outcome.job_id, p.outcome.attempt, why)
        for p in done.held:
            p.maybe_written = True
        self._put_back([], held, done.held)
        if outage or done.error:
            self._failed(outage or done.error)
        elif self.failures:
            log.info("database writes recovered after %d failed attempts", self.failures)
            self.failures, self.retry_at, self._write_error = 0, 0.0, None
        written = done.ok + [p for p, _ in done.bad]
        if done.ok and pathtrace.on():
            pathtrace.stamp("recorder.event", (p.outcome.job_id for p in done.ok))
        self.recorded += len(written)
        return self._settle(written + settled)

    def _write_outcomes(self, outcomes: list[_Pending]):
        """Write outcomes, a refused one as a failure with the reason: (applied, settled, held, outage).

        ``settled`` were written without an event to follow: stale duplicates (their attempt was
        recorded before), and outcomes refused even as failures (their messages are dead-lettered).
        """
        applied, settled, held, outage = [], [], [], None
        todo = outcomes
        while todo:
            done = _narrow(self._record, _groups(todo))
            ids = {id(p) for p in done.applied}
            stale = [p for p in done.ok if id(p) not in ids]
            self.stale += len(stale)
            applied += done.applied
            settled += [replace(p, dead_reason=None) for p in stale]
            todo = []
            for p, why in done.bad:
                if p.replaced:   # refused even as a bare failure: give its message up with the reason
                    log.error("could not record job %d at all (%s); dead-lettering its message",
                              p.outcome.job_id, why)
                    settled.append(replace(p, dead_reason=f"could not record the outcome: {why}"))
                else:
                    log.error("the database refused the outcome of job %d attempt %d (%s); "
                              "recording it as failed", p.outcome.job_id, p.outcome.attempt, why)
                    self.refused += 1
                    todo.append(_as_failure(p, f"could not record the outcome: {why}"))
            if done.error:
                held, outage, todo = done.held + todo, done.error, []
        return applied, settled, held, outage

    def _record(self, group: list[_Pending]) -> list[_Pending]:
        # JobStore.record_outcomes returns the outcomes that took effect (None: all of them);
        # an attempt someone else recorded first does not, and gets no second event.
        if self.one_database and len({p.outcome.job_id for p in group}) == len(group):
            # (a job twice in a group spans two chunks: one could commit before the other
            # fails, and the two-step rewrite would then write its events twice)
            try:
                return self._record_with_events(group)
            except Exception:   # written again the two-step way: that one narrows what fails
                log.debug("outcomes with their events failed; writing them apart", exc_info=True)
                for p in group:   # a try whose COMMIT was lost may have taken them with events
                    p.maybe_written = True
        took = self.dbs.jobs.record_outcomes([p.outcome for p in group])
        if took is None:
            return group
        took = set(took)
        return [p for p in group if p.outcome in took]

    def _record_with_events(self, group: list[_Pending]) -> list[_Pending]:
        """The group's outcomes with their events, each chunk in one transaction; a chunk whose
        rows did not all take their outcome is written alone (its events follow apart)."""
        by_outcome = {id(p.outcome): p for p in group}
        took, joined = self.dbs.jobs.record_outcomes_with(
            [p.outcome for p in group],
            lambda conn, chunk: insert_events(conn, [by_outcome[id(o)].event for o in chunk]))
        out = []
        for o in took:
            p = by_outcome[id(o)]
            p.evented = id(o) in joined
            # not evented: its chunk was contested, and an outcome that read as written before
            # the rewrite was written by a try whose COMMIT was lost, with its event
            p.maybe_written = p.maybe_written or not p.evented
            out.append(p)
        return out

    def _write_marks(self, marks: list[Started]) -> list[Started]:
        self.dbs.jobs.mark_started(marks)
        return marks

    def _write_events(self, group: list[_Pending]) -> list[_Pending]:
        doubtful = [(p.event.job_id, p.event.attempt) for p in group if p.maybe_written]
        there = self.dbs.events.recorded_attempts(doubtful) if doubtful else set()
        if there:
            log.info("%d events were written by a try whose commit was lost; not written again", len(there))
        self.dbs.events.record([p.event for p in group
                                if not (p.maybe_written and (p.event.job_id, p.event.attempt) in there)])
        return group

    def _settle(self, written: list[_Pending]) -> list[Delivery]:
        acks = [d for p in written for d in p.deliveries if p.dead_reason is None or self.on_dead is None]
        for p in written:
            if p.dead_reason is not None and self.on_dead is not None:
                for d in p.deliveries:
                    self.on_dead(d, p.dead_reason)
        if acks and self.on_recorded is not None:
            self.on_recorded(acks)
            if pathtrace.on():
                pathtrace.stamp("recorder.acked", (p.outcome.job_id for p in written))
        return acks

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._write_error = reason
        delay = WRITE_BACKOFF.delay(self.failures)
        if self._stopping:
            delay = min(delay, STOP_RETRY_S)
        self.retry_at = time.monotonic() + delay
        log.error("could not write to the database (%s); holding %d outcomes unacked, retrying in %.1fs",
                  reason, self.waiting, delay)

    def _put_back(self, marks, outcomes, events) -> None:
        with self._lock:
            now = time.monotonic()
            for s in marks:
                self._started.setdefault(s.job_id, (now - self.mark_running_after, s))
            self._outcomes[:0] = outcomes
            self._events[:0] = events
            if self._outcomes or self._events:
                self._oldest = now

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                left = len(self._outcomes) + len(self._events)
                if self._stopping and (not left or now >= self._deadline):
                    if left:
                        log.warning("stopping with %d outcomes unrecorded (%s); their messages are "
                                    "not acked and return to the queue", left, self._write_error)
                    return
                due = self._due_in_locked()
                if due is None or due > 0:
                    self._lock.wait(min(IDLE_WAIT_S if due is None else due, max(0.0, self._deadline - now)))
                    continue
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one write
                # a bug or an error no write path expected: had it ended this thread, nothing
                # would be recorded or acked again while the subscriber kept taking work. What
                # the failed flush held stays unacked: its messages come back when the consumer
                # is next reopened, and are recorded by whoever runs them then.
                log.exception("the recorder's write failed unexpectedly")
                self._failed(f"{type(exc).__name__}: {exc}")

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is left, retrying until ``timeout``; return by then, written or not.

        What is not written by then stays unacked: its messages return to the queue when the
        consumer closes, and are recorded by whoever runs them next.
        """
        with self._lock:
            self._stopping = True
            # the thread gives up a moment early, so it has ended by the time the join returns
            timeout = max(0.0, timeout)
            self._deadline = time.monotonic() + timeout - min(0.2, timeout / 5)
            self.retry_at = 0.0
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)


def _narrow(write: Callable[[list], list], groups: list[list]) -> _Narrowed:
    """Write each group; split a refused one until the items the database refuses alone are found.

    ``write`` returns the items of its group that took effect. Until some write succeeds (or the
    database complains about a value, which shows it is up), a refused group is split into its
    first item and the rest, and ``PROBES`` items refused alone mean the database refuses
    everything: an outage, like a lost connection. Once it is known to be up, groups are halved.
    An outage costs at most ``2 * PROBES`` writes; k bad items among n about ``2 k log2 n``.
    """
    out = _Narrowed()
    stack = [list(g) for g in reversed(groups) if g]
    alive = False
    suspects: list[tuple[object, str]] = []   # refused alone before the database showed it is up
    while stack:
        group = stack.pop()
        try:
            out.applied += write(group)
        except Exception as exc:  # DatabaseError, SQLAlchemy's own, or a value the driver cannot bind
            kind, why = _kind(exc), _reason(exc)
            if kind == "outage" or (len(group) == 1 and not alive and kind != "item"
                                    and len(suspects) + 1 >= PROBES):
                out.held = [s for s, _ in suspects] + group + [i for g in reversed(stack) for i in g]
                out.error = why
                return out
            alive = alive or kind == "item"
            if len(group) > 1:
                half = len(group) // 2 if alive else 1
                stack += [group[half:], group[:half]]
            elif alive:
                out.bad.append((group[0], why))
            else:
                suspects.append((group[0], why))
            continue
        alive = True
        out.ok += group
    if suspects and not alive:
        out.held = [s for s, _ in suspects]
        out.error = suspects[-1][1]
    else:
        out.bad += suspects
    return out


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _kind(exc: BaseException) -> str:
    """``outage`` (the database, not the data), ``item`` (this data), or ``unsure``."""
    dbapi = next((e for e in _chain(exc) if isinstance(e, sa.exc.DBAPIError)), None)
    if dbapi is None:
        # Raised before the database saw it: a value the driver cannot bind (an integer SQLite
        # cannot hold, a lone surrogate that is no UTF-8). Anything else may be a bug of ours,
        # which must not fail jobs: it is narrowed like an outage, and reported.
        return "item" if any(isinstance(e, (UnicodeError, OverflowError)) for e in _chain(exc)) else "unsure"
    args = getattr(dbapi.orig, "args", ())
    if dbapi.connection_invalidated or (args and isinstance(args[0], int) and args[0] in _OUTAGE_CODES) \
            or "database is locked" in str(dbapi.orig):
        return "outage"
    return "item" if isinstance(dbapi, (sa.exc.DataError, sa.exc.IntegrityError)) else "unsure"


def _reason(exc: BaseException) -> str:
    """The innermost error's type and first line: the database's own words, not our wrapper's."""
    inner = list(_chain(exc))[-1]
    text = str(inner).splitlines()[0] if str(inner) else ""
    return _text(f"{type(inner).__name__}: {text}", 300)


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with anything that is no UTF-8 escaped."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _fit(p: _Pending) -> _Pending:
    """The pending outcome as it can be written: a result over the cap fails the job, an error is cut."""
    o = p.outcome
    # len() first: only a text that might be over the cap is encoded to count its bytes
    if o.result is not None and len(o.result) * 4 > RESULT_CAP:
        size = len(o.result.encode("utf-8", "surrogatepass"))
        if size > RESULT_CAP:
            return _as_failure(p, f"result too large ({size} bytes; the cap is {RESULT_CAP})", replaced=False)
    if o.error is not None and len(o.error) > ERROR_CAP:
        cut = f"… (cut: {len(o.error)} characters)"
        return replace(p, outcome=replace(o, error=o.error[:ERROR_CAP - len(cut)] + cut))
    return p


def _as_failure(p: _Pending, error: str, replaced: bool = True) -> _Pending:
    """A failed outcome standing in for one that cannot be recorded: no result, the reason as error."""
    o = p.outcome
    worker = _text(o.worker or "", 200)
    return _Pending(replace(o, status=FAILED, result=None, error=_text(error, ERROR_CAP), worker=worker,
                            not_before_ms=None),
                    replace(p.event, outcome=event_outcome(FAILED), worker=worker or p.event.worker),
                    p.deliveries, None, replaced, maybe_written=p.maybe_written)


def _groups(items: Sequence[_Pending]) -> list[list[_Pending]]:
    """Consecutive groups of at most ``GROUP_ROWS`` outcomes and ``GROUP_CHARS`` of their text."""
    groups: list[list[_Pending]] = []
    size = GROUP_CHARS + 1
    for p in items:
        n = len(p.outcome.result or "") + len(p.outcome.error or "")
        if size + n > GROUP_CHARS or len(groups[-1]) >= GROUP_ROWS:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += n
    return groups


def _one_database(dbs) -> bool:
    """Whether the provisioning and analytics engines point at one database (same URL)."""
    try:
        return dbs.provisioning.url == dbs.analytics.url
    except AttributeError:   # a stand-in without engines (tests)
        return False
