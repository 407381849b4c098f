"""The analytics database: one event per attempt (job, action, outcome, duration, worker, host,
error, time).

Events are pruned once old (``db/retention.py``); what the metrics count of them is kept as
totals per (action, outcome) with a duration histogram (``enstratus_action_total``), and the
same per minute for the status page's charts (``enstratus_action_minute``), both added to by
``record`` in the events' own transaction: one upsert each per chunk of events, so the totals
agree with the events ever written, and a scrape (or a chart of the last hour) reads a row per
(action, outcome) (per minute) whatever the number of events.

The totals keep at most ``ACTIONS_KEPT`` actions by name: retention (``db/retention.py``) folds
the others' rows, those with the fewest attempts, into the rows of ``OTHER_ACTIONS``. Submitting
takes any well-formed action name (a plugin may be installed on the workers only), so a client
inventing names (one with an id in it) would otherwise add a row per name and outcome for ever,
and every scrape would read them all. ``/metrics`` shows the same actions by name either way.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Callable, Sequence

import sqlalchemy as sa

from ..errors import DatabaseError
from . import driver
from .retry import retried
from .schema import BUCKET_COLUMNS, DURATION_BUCKETS, MINUTE_MS
from .schema import action_minutes as AM
from .schema import action_totals as AT
from .schema import events as E
from .schema import server_events as SE


#: actions whose totals keep their own rows; the rest are summed under ``OTHER_ACTIONS``
ACTIONS_KEPT = 200
#: the action name of the summed rows: parentheses are never in an action's name
OTHER_ACTIONS = "(other)"


@dataclass(frozen=True)
class Event:
    job_id: int
    action: str
    queue: str
    attempt: int
    outcome: str
    duration_ms: int
    worker: str | None
    event_timestamp: int
    error: str | None = None     # the attempt's error, cut to schema.EVENT_ERROR_MAX
    host: str | None = None      # where the subscriber that recorded it runs


@dataclass(frozen=True)
class ServerEvent:
    """A server's state changed (launching -> running -> unreachable -> terminated ...)."""

    server_id: str
    account: str | None
    old_state: str | None
    new_state: str
    job_id: int | None
    action: str | None
    event_timestamp: int


_COLUMNS = [f.name for f in fields(Event)]
# an event's values in column order; dataclasses.astuple deep-copies each (scalar) field, which
# cost more than the INSERT itself on the recorder's hot path
_VALUES = attrgetter(*_COLUMNS)
_BOUNDS_MS = tuple(b * 1000 for b in DURATION_BUCKETS)
_ADDED = ("attempts", "duration_ms") + BUCKET_COLUMNS


@dataclass(frozen=True)
class ActionTotal:
    """Attempts of one action with one outcome ever recorded (pruned events included)."""

    action: str
    outcome: str
    attempts: int
    duration_ms: int
    buckets: tuple[int, ...]   # per bound of DURATION_BUCKETS, not cumulative


@dataclass(frozen=True)
class MinuteTotal(ActionTotal):
    """The same, for the attempts that ended in one minute."""

    minute_ms: int             # the minute's start, ms since the epoch


def _sums_of(events: Sequence[Event], key: Callable[[Event], tuple]) -> list[tuple]:
    """Rows to add for ``events``, one per ``key``: (*key, attempts, duration_ms, *buckets), in
    key order (the order every writer locks them in, so two subscribers' upserts wait for each
    other, not deadlock)."""
    per: dict[tuple, list[int]] = {}
    width = len(BUCKET_COLUMNS)
    for e in events:
        row = per.setdefault(key(e), [0] * (2 + width))
        row[0] += 1
        row[1] += e.duration_ms
        i = bisect_left(_BOUNDS_MS, e.duration_ms)   # first bound >= duration; past all: +Inf only
        if i < width:
            row[2 + i] += 1
    return [(*k, *row) for k, row in sorted(per.items())]


def _totals_of(events: Sequence[Event]) -> list[tuple]:
    """Rows of ``enstratus_action_total`` to add for ``events``."""
    return _sums_of(events, lambda e: (e.action, e.outcome))


def ranked_actions(attempts: dict[str, int]) -> list[str]:
    """Action names by their attempts, most first, by name on a tie: the order ``/metrics``
    keeps names in and ``fold_totals`` folds them from the end of."""
    return sorted(attempts, key=lambda a: (-attempts[a], a))


def fold_totals(engine: sa.Engine, most: int | None = None, batch: int = 100) -> tuple[int, bool]:
    """Sum the totals of up to ``batch`` actions past the ``most`` with the most attempts into
    the rows of ``OTHER_ACTIONS`` and delete theirs, in one transaction (module docstring):
    (rows folded, whether more are past ``most``). The rows folded are locked first and deleted
    by key, so an attempt recorded meanwhile is either summed or left in a row of its own."""
    most = ACTIONS_KEPT if most is None else most
    with engine.connect() as conn:
        names = conn.execute(sa.text(
            f"SELECT action FROM enstratus_action_total WHERE action <> :other GROUP BY action "
            f"ORDER BY SUM(attempts) DESC, action LIMIT {int(batch) + 1} OFFSET {int(most)}"
        ).bindparams(other=OTHER_ACTIONS)).scalars().all()
    if not names:
        return 0, False
    with engine.begin() as conn:
        rows = conn.execute(sa.select(AT).where(AT.c.action.in_(names[:batch]))
                            .order_by(AT.c.action, AT.c.outcome).with_for_update()).all()
        if not rows:
            return 0, len(names) > batch
        sums: dict[str, list[int]] = {}
        for r in rows:
            row = sums.setdefault(r.outcome, [0] * len(_ADDED))
            for i, column in enumerate(_ADDED):
                row[i] += int(getattr(r, column))
        _upsert_sums(conn, "enstratus_action_total", ("action", "outcome"),
                     [(OTHER_ACTIONS, outcome, *row) for outcome, row in sorted(sums.items())])
        conn.execute(AT.delete().where(sa.tuple_(AT.c.action, AT.c.outcome).in_(
            [(r.action, r.outcome) for r in rows])))
    return len(rows), len(names) > batch


def _minutes_of(events: Sequence[Event]) -> list[tuple]:
    """Rows of ``enstratus_action_minute`` to add for ``events`` (by the minute they ended in)."""
    return _sums_of(events, lambda e: (e.event_timestamp - e.event_timestamp % MINUTE_MS, e.action, e.outcome))


def _upsert_sums(conn, table: str, keys: tuple[str, ...], rows: list[tuple]) -> None:
    """Add ``rows`` (keys then the summed columns) to ``table``, one statement."""
    columns = keys + _ADDED
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    values = ", ".join(["(" + ", ".join([mark] * len(columns)) + ")"] * len(rows))
    if conn.dialect.name == "mysql":
        add = ", ".join(f"{c} = {c} + VALUES({c})" for c in _ADDED)
        tail = f"ON DUPLICATE KEY UPDATE {add}"
    else:
        add = ", ".join(f"{c} = {c} + excluded.{c}" for c in _ADDED)
        tail = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {add}"
    driver.execute(conn, f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} {tail}",
                   tuple(v for r in rows for v in r))


class EventStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def record(self, events: Sequence[Event]) -> None:
        """Insert the events in one multi-row INSERT (one transaction), run again after a
        conflict or a lost writer node (``db/retry.py``)."""
        if not events:
            return
        try:
            self._insert(events)
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseError(f"could not record {len(events)} events: {type(exc).__name__}") from exc

    @retried()
    def _insert(self, events: Sequence[Event]) -> None:
        with self.engine.begin() as conn:
            insert_events(conn, events)

    @retried(idempotent=True)
    def recorded_attempts(self, attempts: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of the (job id, attempt) pairs have an event already: the recorder asks before
        writing again an event whose earlier write may have committed unheard (its COMMIT was
        lost). One indexed read per 500 jobs; the ids are integers, inlined."""
        wanted = {(int(j), int(a)) for j, a in attempts}
        ids = sorted({j for j, _ in wanted})
        found: set[tuple[int, int]] = set()
        with self.engine.connect() as conn:
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                found.update((j, a) for j, a in conn.exec_driver_sql(
                    f"SELECT job_id, attempt FROM enstratus_job_event "
                    f"WHERE job_id IN ({', '.join(map(str, chunk))})"))
        return found & wanted

    def totals(self) -> list[ActionTotal]:
        """Every (action, outcome)'s totals, by action then outcome: one row each."""
        q = sa.select(AT).order_by(AT.c.action, AT.c.outcome)
        with self.engine.connect() as conn:
            return [ActionTotal(r.action, r.outcome, int(r.attempts), int(r.duration_ms),
                                tuple(int(getattr(r, c)) for c in BUCKET_COLUMNS))
                    for r in conn.execute(q)]

    def minutes(self, since_ms: int) -> list[MinuteTotal]:
        """The per-minute totals of the minutes from the one holding ``since_ms`` on, oldest
        first: a row per minute and (action, outcome), however many events they count."""
        q = (sa.select(AM.c.minute_ms, AM.c.action, AM.c.outcome, AM.c.attempts, AM.c.duration_ms,
                       *(AM.c[c] for c in BUCKET_COLUMNS))
             .where(AM.c.minute_ms >= since_ms - since_ms % MINUTE_MS)
             .order_by(AM.c.minute_ms, AM.c.action, AM.c.outcome))
        with self.engine.connect() as conn:   # by position: a few thousand rows for a page
            return [MinuteTotal(r[1], r[2], int(r[3]), int(r[4]), tuple(map(int, r[5:])), int(r[0]))
                    for r in conn.execute(q).all()]

    @retried()
    def record_server_event(self, event: ServerEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(SE.insert().values(**event.__dict__))

    def server_events(self, server_id: str) -> list[ServerEvent]:
        return self._server_events(sa.select(SE).where(SE.c.server_id == server_id))

    def _server_events(self, q) -> list[ServerEvent]:
        with self.engine.connect() as conn:
            return [ServerEvent(**{k: v for k, v in r.items() if k != "event_id"})
                    for r in conn.execute(q.order_by(SE.c.event_id)).mappings()]

    def for_job(self, job_id: int) -> list[Event]:
        q = sa.select(E).where(E.c.job_id == job_id).order_by(E.c.event_id)
        with self.engine.connect() as conn:
            return [Event(**{k: v for k, v in r.items() if k != "event_id"}) for r in conn.execute(q).mappings()]

    def server_events_for_job(self, job_id: int, limit: int = 200) -> list[ServerEvent]:
        """The server state changes a job made, oldest first (at most ``limit``)."""
        return self._server_events(sa.select(SE).where(SE.c.job_id == job_id).limit(limit))

    def summary(self, since_ms: int = 0) -> dict[str, dict]:
        """Per action: count of attempts by outcome and mean duration since ``since_ms``."""
        q = (sa.select(E.c.action, E.c.outcome, sa.func.count(), sa.func.avg(E.c.duration_ms))
             .where(E.c.event_timestamp >= since_ms).group_by(E.c.action, E.c.outcome))
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for action, outcome, n, avg in conn.execute(q):
                a = out.setdefault(action, {"outcomes": {}, "mean_ms": {}})
                a["outcomes"][outcome] = int(n)
                a["mean_ms"][outcome] = float(avg or 0)
        return out


def insert_events(conn, events: Sequence[Event]) -> None:
    """The events and their totals, on ``conn`` (``EventStore.record``'s transaction, or the
    recorder's outcome transaction when both databases are one: ``db/job_outcomes.py``)."""
    # One multi-row INSERT through the driver: on the subscriber's hot path, building
    # a dict per row for SQLAlchemy's executemany costs more than the insert itself.
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    row = "(" + ", ".join([mark] * len(_COLUMNS)) + ")"
    for chunk in (events[i:i + 500] for i in range(0, len(events), 500)):
        driver.execute(
            conn, f"INSERT INTO enstratus_job_event ({', '.join(_COLUMNS)}) VALUES "
            + ", ".join([row] * len(chunk)),
            tuple(v for e in chunk for v in _VALUES(e)))
        _upsert_sums(conn, "enstratus_action_total", ("action", "outcome"), _totals_of(chunk))
        _upsert_sums(conn, "enstratus_action_minute", ("minute_ms", "action", "outcome"),
                     _minutes_of(chunk))
