"""Writing what the subscriber records in ``enstratus_job``: running marks and outcomes.

Split from ``jobs.py`` (``JobStore.mark_started`` and ``record_outcomes`` call these), with the
CASE-UPDATE they share with the rest of the store and the job totals every finishing write adds
to. The ownership rule the guards enforce is ``jobs.py``'s module docstring.

An outcome chunk is one transaction. ``also(conn, chunk)``, when given, runs in that same
transaction once every row of the chunk took its outcome: the recorder writes the chunk's
analytics events there when both databases are one (``Recorder``), so an outcome and its event
cost one commit, not two. A chunk some of whose rows refuse their outcome is rolled back, ``also``
with it, and written again without it (``_record_contested``): the caller writes those events
its usual way.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import sqlalchemy as sa

from ..jobs import lifecycle
from ..jobs.values import Outcome, Started
from . import driver, schema
from .retry import retried

RECORD_CHUNK = 200  # rows per CASE-UPDATE: stays well under SQLite's bound-parameter limit

Also = Callable[[object, Sequence[Outcome]], None]


def mark_chunks(engine: sa.Engine, started: Sequence[Started]) -> None:
    """Mark jobs running (``JobStore.mark_started``), one transaction per chunk."""
    for chunk in _unique_chunks(started, RECORD_CHUNK):
        _mark_chunk(engine, chunk)


@retried(idempotent=True)   # guarded: a mark that took effect does not apply twice
def _mark_chunk(engine: sa.Engine, chunk: Sequence[Started]) -> None:
    with engine.begin() as conn:
        _case_update(conn, chunk, {
            "status": lambda s: schema.RUNNING, "attempts": lambda s: s.attempt,
            "worker": lambda s: s.worker, "owner": lambda s: s.owner,
            "start_timestamp": lambda s: s.start_ms})


def record_chunks(engine: sa.Engine, outcomes: Sequence[Outcome], also: Also | None = None
                  ) -> tuple[list[Outcome], set[int]]:
    """Write the outcomes chunk by chunk (``JobStore.record_outcomes``): those that took effect,
    and the ``id()`` of each outcome whose chunk ran ``also`` in its own transaction."""
    applied: list[Outcome] = []
    joined: set[int] = set()
    for chunk in _unique_chunks(outcomes, RECORD_CHUNK):
        took, with_also = _record_chunk(engine, chunk, also)
        applied.extend(took)
        if with_also:
            joined.update(id(o) for o in took)
    return applied, joined


@retried(idempotent=True)   # an outcome that took effect reads back as such: counted once
def _record_chunk(engine: sa.Engine, chunk: Sequence[Outcome], also: Also | None
                  ) -> tuple[list[Outcome], bool]:
    """One chunk in one transaction; the outcomes that took effect, and whether ``also`` ran
    (and committed) with them."""
    try:
        with engine.begin() as conn:
            counted = _cancelled_already(conn, chunk)
            if _write_outcomes(conn, chunk) != len(chunk):
                raise _Contested()   # undone: written again, read around
            _add_totals(conn, _finished(o for o in chunk if o.job_id not in counted))
            _count_deferrals(conn, chunk)   # every row's guard held
            if also is not None:
                also(conn, chunk)
        return list(chunk), also is not None
    except _Contested:
        return _record_contested(engine, chunk), False


def _record_contested(engine: sa.Engine, chunk: Sequence[Outcome]) -> list[Outcome]:
    """A chunk some of whose rows refused their outcome, written again with a read before
    and after: what took effect reads back as the outcome's attempt, owner and end time,
    and what already read so before was written by an earlier try whose commit was not
    confirmed (a lost connection): it took effect, but is not counted in the totals twice.
    Rare (another owner's or a duplicate's outcome), so the two reads cost nothing overall."""
    ids = ", ".join(str(int(o.job_id)) for o in chunk)
    read = f"SELECT job_id, attempts, owner, end_timestamp, status FROM enstratus_job WHERE job_id IN ({ids})"
    with engine.begin() as conn:
        lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE
        before = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(read + lock)}
        _write_outcomes(conn, chunk)
        now = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(read)}
        took = [o for o in chunk if now.get(o.job_id, ())[:3] == (o.attempts, o.owner, o.end_ms)]
        new = [o for o in took if before.get(o.job_id) != now[o.job_id]]
        # a cancel's outcome on a row cancelled before it ran was counted by the cancel
        _add_totals(conn, _finished(o for o in new if before[o.job_id][3] != schema.CANCELLED))
        _count_deferrals(conn, new)
    return took


class _Contested(Exception):
    """Some row of an outcome chunk refused its outcome: its transaction is rolled back."""


def _write_outcomes(conn, chunk: Sequence[Outcome]) -> int:
    """The outcomes' CASE-UPDATE (``_case_update``); returns the rows whose guard held.

    A deferred outcome leaves the row at the attempts before it, held until ``not_before_ms``
    (every other outcome clears it); a cancel's outcome may also land on a row that was
    cancelled while its attempt was open (``_case_update``)."""
    return _case_update(conn, chunk, {
        "status": lambda o: o.status, "attempts": lambda o: o.attempts,
        "worker": lambda o: o.worker, "owner": lambda o: o.owner,
        "start_timestamp": lambda o: o.start_ms,
        "end_timestamp": lambda o: o.end_ms, "result": lambda o: o.result,
        "error": lambda o: o.error, "not_before_ms": lambda o: o.not_before_ms},
        cancelled=[o.job_id for o in chunk if o.status == schema.CANCELLED])


def _cancelled_already(conn, chunk: Sequence[Outcome]) -> set[int]:
    """The jobs of the chunk's cancel outcomes whose rows read cancelled already (a cancel that
    landed while the attempt was handed to a worker): counted in the totals by that cancel.
    One indexed read, only for a chunk that holds a cancel's outcome."""
    ids = [int(o.job_id) for o in chunk if o.status == schema.CANCELLED]
    if not ids:
        return set()
    return {r[0] for r in conn.exec_driver_sql(
        f"SELECT job_id FROM enstratus_job WHERE job_id IN ({', '.join(map(str, ids))}) "
        f"AND status = '{schema.CANCELLED}'")}


def _count_deferrals(conn, applied: Iterable[Outcome]) -> None:
    """One more deferral for each job a deferred outcome took effect on (rare: one UPDATE)."""
    ids = [int(o.job_id) for o in applied if o.deferred]
    if ids:
        conn.exec_driver_sql(f"UPDATE enstratus_job SET deferrals = deferrals + 1 "
                             f"WHERE job_id IN ({', '.join(map(str, ids))})")


def _finished(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """``{finished status: outcomes}`` (a retry leaves its job pending: not a total's business)."""
    out: dict[str, int] = {}
    for o in outcomes:
        if o.status in schema.TERMINAL:
            out[o.status] = out.get(o.status, 0) + 1
    return out


def _add_totals(conn, deltas: dict[str, int]) -> None:
    """Add ``deltas`` to the finished statuses' totals: one UPDATE, none if there is nothing to
    add. The rows exist from the schema's seed on, so no upsert, and every writer locks them in
    the same (status) order within its transaction, after its job rows."""
    deltas = {s: n for s, n in sorted(deltas.items()) if n and s in schema.TERMINAL}
    if not deltas:
        return
    whens = " ".join(f"WHEN '{s}' THEN {int(n)}" for s, n in deltas.items())
    driver.execute(
        conn, f"UPDATE enstratus_job_total SET jobs = jobs + CASE status {whens} ELSE 0 END "
        f"WHERE status IN ({', '.join(repr(s) for s in deltas)})")


def _case_update(conn, rows, columns: dict, cancelled: Sequence[int] = ()) -> int:
    """One ``UPDATE ... SET col = CASE WHEN job_id IN (7, 9) THEN ? ... END`` for many rows.

    Raw SQL through the driver with positional parameters, the same statement on SQLite and
    MySQL (only the placeholder differs): the subscriber writes one of these every few ms, and
    SQLAlchemy's expression or text() construction costs more per row than the database does.
    Each column's value is given once per distinct value, not once per row (``_by_value``): in a
    batch most columns hold one value for every row (status, attempt, owner, result of a
    ``noop``), and then it is a plain ``SET col = ?``; the driver escapes and the server
    compares far less than with a ``WHEN`` per row and column.
    Job ids and attempts are integers from our own rows and messages, inlined with ``%d``; every
    other value is a bound parameter. The WHERE is the ownership rule of the module docstring:
    each row's attempt open (pending/queued one below it) or held by the writer (running at it,
    same owner). The jobs in ``cancelled`` (outcomes of a cancel) may also land on a row that a
    cancel ended while their attempt was open: a worker had been handed it, and ran its
    compensation once told; that is the one outcome a cancelled row takes, once (it then reads
    the attempt). Rows must have distinct job ids.
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    ids = [int(r.job_id) for r in rows]
    params: list = []
    sets = [f"{column} = {_by_value(ids, map(value_of, rows), mark, params)}"
            for column, value_of in columns.items()]
    attempt = _by_value(ids, (int(r.attempt) for r in rows), None, [])
    owner = _by_value(ids, (r.owner for r in rows), mark, params)
    late_cancel = ""
    if cancelled:
        late_cancel = (f" OR (status = '{schema.CANCELLED}' AND attempts = {attempt} - 1 "
                       f"AND job_id IN ({', '.join(str(int(i)) for i in cancelled)}))")
    sql = (f"UPDATE enstratus_job SET {', '.join(sets)} "
           f"WHERE job_id IN ({', '.join(map(str, ids))}) AND ("
           f"(status IN ({', '.join(repr(s) for s in lifecycle.OPEN)}) AND attempts = {attempt} - 1) OR "
           f"(status = '{schema.RUNNING}' AND attempts = {attempt} AND owner = {owner}){late_cancel})")
    # rows matched: SQLite counts them, and SQLAlchemy connects to MySQL with CLIENT_FOUND_ROWS
    return driver.execute(conn, sql, tuple(params)).rowcount


def _by_value(ids: Sequence[int], values: Iterable, mark: str | None, params: list) -> str:
    """The SQL for each row's value, keyed by ``job_id``: the value itself when every row has
    the same, else ``CASE WHEN job_id IN (...) THEN v ... ELSE v END`` with one branch per
    distinct value (the commonest as the ELSE, so it lists no ids: the statement's WHERE keeps
    every other row out). Values are bound (``mark``, appended to ``params`` in the order they
    stand in the SQL) or, with ``mark`` None, inlined as integers."""
    groups: dict = {}
    for job_id, value in zip(ids, values):
        groups.setdefault(value, []).append(job_id)

    def sql_of(value) -> str:
        if mark is None:
            return str(int(value))
        params.append(value)
        return mark

    if len(groups) == 1:
        return sql_of(next(iter(groups)))
    commonest = max(groups, key=lambda v: len(groups[v]))
    whens = [f"WHEN job_id IN ({', '.join(map(str, group))}) THEN {sql_of(value)}"
             for value, group in groups.items() if value is not commonest]
    return f"CASE {' '.join(whens)} ELSE {sql_of(commonest)} END"


def _unique_chunks(items: Sequence, size: int):
    """Chunks of at most ``size`` with no job id twice (a CASE takes one value per id): a
    second item for a job goes to a later chunk, where the guard sees the first one's write."""
    rest = list(items)
    while rest:
        seen, now, later = set(), [], []
        for item in rest:
            (later if item.job_id in seen else now).append(item)
            seen.add(item.job_id)
        yield from _chunks(now, size)
        rest = later


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
