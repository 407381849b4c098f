"""The outbox relay: the publisher's pass over the pending jobs, in one transaction.

A pass reads the outbox once (``probe``: the first attempts queued per queue, the accounts with
jobs pending on each queue, the pauses), lets the planner (``jobs/fairshare.py``) deal the room
of each queue's window to the accounts, reads each account's oldest pending jobs as dealt,
hands them to ``publish`` interleaved by turn, and marks the confirmed ones queued.

The rows stay locked (``FOR UPDATE SKIP LOCKED`` on MySQL; the write lock on SQLite, taken by
``BEGIN IMMEDIATE``) from the read until the commit, so two publishers never relay one job
twice, and a crash before the commit leaves the jobs pending: at worst published again, never
lost.

What it costs. Every read is a range of the index ``ix_enstratus_job_relay`` (status, queue,
account, job_id): the probe's accounts are a ``GROUP BY`` that MariaDB and MySQL answer by
skipping from group to group in the index (a loose index scan: one step per (queue, account),
whatever the backlog), and the queued count reads at most a window of rows per queue. With one
account waiting, a pass is the probe and the one locking ``SELECT`` the relay always had; each
further account dealt a turn adds one indexed ``SELECT ... LIMIT n``.

At idle, and under a trickle of jobs, a pass is one statement. When the pass before left
nothing pending that it could see (``FairShare.outbox_emptied``), the next one first reads the
oldest ``_FEW_READ`` pending jobs, locked, each with its queue's window count and its queue's and
account's pauses (``_few``): if fewer come back, they are every pending job (but those another
publisher holds locked, which it is relaying), so they make the whole outlook, planned as the
probe's would be (a paused queue or account, or a full window, still gets no room), and they are
the groups' rows: the probe and the takes are skipped. A lone job is such a pass; so is each pass
of the one-at-a-time path, where jobs come a few per pass (one ``POST /jobs`` each: read through
the probe and a take, such a pass cost three statements where one does). As many rows mean a
backlog is building: the pass reads the outbox as above, in the same transaction (the rows it
holds are its own, and the takes read them again).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import sqlalchemy as sa

from ..clock import now_ms
from ..errors import PublishError
from ..jobs.fairshare import FairShare, Group, Outlook, Paused, Plan
from ..jobs import lifecycle, pathtrace
from ..jobs.lifecycle import PENDING, QUEUED
from . import driver, packed


class Relayed(NamedTuple):
    """What the publisher needs of a pending job to publish it."""

    job_id: int
    action: str
    arguments: str
    queue: str
    attempts: int
    max_attempts: int
    not_before_ms: int | None = None        # deferred: held by the broker until then
    cancel_requested_ms: int | None = None  # relayed only to carry its compensation

    def next_attempt(self, now: int) -> lifecycle.NextAttempt:
        """The attempt it is published as, and the broker-held delay (``lifecycle.next_attempt``)."""
        return lifecycle.next_attempt(self.attempts, self.not_before_ms, now, self.cancel_requested_ms is not None)


class RelayPass(NamedTuple):
    relayed: int     # jobs published and marked queued
    more: bool       # room is left that another pass at once could fill (``FairShare.settle``)


# The accounts with jobs pending on each queue, one step per (queue, account) whatever the
# backlog. MariaDB and MySQL skip through the index from group to group for a GROUP BY (a loose
# index scan), but only for a range of the index's first column, not for one value: hence two
# statuses, the queued groups being read and ignored. SQLite has no loose scan: it is spelled
# out, a recursive MIN(...) > previous per queue and per account (and one probe for the jobs
# without an account, which MIN skips).
_WAITING = {
    "mysql": (f"SELECT status, queue, account, 0 FROM enstratus_job WHERE status IN ('{PENDING}', '{QUEUED}') "
              f"GROUP BY status, queue, account"),
    "sqlite": (
        f"WITH RECURSIVE "
        f"qs(queue) AS (SELECT MIN(queue) FROM enstratus_job WHERE status = '{PENDING}' "
        f"UNION ALL SELECT (SELECT MIN(queue) FROM enstratus_job WHERE status = '{PENDING}' "
        f"AND queue > qs.queue) FROM qs WHERE qs.queue IS NOT NULL), "
        f"accts(queue, account) AS (SELECT queue, (SELECT MIN(account) FROM enstratus_job "
        f"WHERE status = '{PENDING}' AND queue = qs.queue) FROM qs WHERE queue IS NOT NULL "
        f"UNION ALL SELECT queue, (SELECT MIN(account) FROM enstratus_job WHERE status = '{PENDING}' "
        f"AND queue = accts.queue AND account > accts.account) FROM accts WHERE account IS NOT NULL) "
        f"SELECT '{PENDING}', queue, account, 0 FROM accts WHERE account IS NOT NULL "
        f"UNION ALL SELECT '{PENDING}', queue, NULL, 0 FROM qs WHERE queue IS NOT NULL AND EXISTS ("
        f"SELECT 1 FROM enstratus_job WHERE status = '{PENDING}' AND queue = qs.queue AND account IS NULL)"),
}
# A job in its queue's window: a first attempt queued, not counting a deferred one whose time has
# not come (the broker holds it, as it holds a retry)
_IN_WINDOW = f"status = '{QUEUED}' AND attempts = 0 AND (not_before_ms IS NULL OR not_before_ms <= {{now}})"
# ... then the jobs in each queue's window (at most a window of rows each), and the pauses
_REST = (f" UNION ALL SELECT 'window', queue, NULL, COUNT(*) FROM enstratus_job WHERE {_IN_WINDOW} "
         "GROUP BY queue UNION ALL SELECT kind, name, NULL, since_ms FROM enstratus_pause")
_COLUMNS = "job_id, action, arguments, queue, attempts, max_attempts, not_before_ms, cancel_requested_ms"
# the jobs in the window of the queue of the job read (``j``), as the probe counts them (the
# unqualified columns are the subquery's own table's, ``w``)
_QUEUED_OF_J = f"SELECT COUNT(*) FROM enstratus_job w WHERE {_IN_WINDOW} AND w.queue = j.queue"
#: most rows ``_few`` reads: fewer back make the whole outbox (a pass of the one-at-a-time path
#: relays a few jobs; a batch of 500 submitted at once is a backlog, for the probe)
_FEW_READ = 32
_FEW_COLUMNS = ", ".join(f"j.{c.strip()}" for c in _COLUMNS.split(","))


def probe(conn) -> Outlook:
    """The outbox's outlook in one statement (module docstring)."""
    queued: dict[str, int] = {}
    waiting: dict[str, list[str | None]] = {}
    paused: dict[str, set[str]] = {"queue": set(), "account": set()}
    sql = _WAITING["sqlite" if conn.dialect.name == "sqlite" else "mysql"] + _REST.format(now=int(now_ms()))
    for kind, name, account, n in conn.exec_driver_sql(sql):
        if kind == "window":
            queued[name] = int(n)
        elif kind == PENDING:
            waiting.setdefault(name, []).append(account)
        elif kind in paused:
            paused[kind].add(name)
    return Outlook(queued, waiting, Paused(frozenset(paused["queue"]), frozenset(paused["account"])))


def _few(conn) -> tuple[Outlook, list[tuple[Relayed, str | None]]] | None:
    """The outlook and the rows (with their accounts) of every pending job, in one locking
    statement, when fewer than ``_FEW_READ`` are pending; None otherwise (the probe's turn). The
    subqueries' rows are not locked (only the outer table's are: MariaDB's and MySQL's rule for a
    locking read); MariaDB answers a correlated subquery once per value (its subquery cache)."""
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
    rows = packed.select(
        conn, f"{_FEW_COLUMNS}, j.account, ({_QUEUED_OF_J.format(now=int(now_ms()))}), "
        "EXISTS (SELECT 1 FROM enstratus_pause p WHERE p.kind = 'queue' AND p.name = j.queue), "
        "EXISTS (SELECT 1 FROM enstratus_pause p WHERE p.kind = 'account' AND p.name = j.account)",
        f"FROM enstratus_job j WHERE j.status = '{PENDING}' ORDER BY j.job_id LIMIT {_FEW_READ}{lock}")
    if len(rows) >= _FEW_READ:
        return None
    queued: dict[str, int] = {}
    waiting: dict[str, list[str | None]] = {}
    paused_queues, paused_accounts = set(), set()
    read = []
    for *job, account, in_window, queue_paused, account_paused in rows:
        relayed = Relayed(*job)
        read.append((relayed, account))
        queued[relayed.queue] = int(in_window)
        accounts = waiting.setdefault(relayed.queue, [])
        if account not in accounts:
            accounts.append(account)
        # int(): packed, MariaDB writes a correlated EXISTS as "0" or "1", a string
        if int(queue_paused):
            paused_queues.add(relayed.queue)
        if int(account_paused):
            paused_accounts.add(account)
    return Outlook(queued, waiting, Paused(frozenset(paused_queues), frozenset(paused_accounts))), read


def _grouped(read: list[tuple[Relayed, str | None]], group: Group) -> list[Relayed]:
    """The group's rows among those ``_few`` read, oldest first, as its take would read them."""
    rows = [r for r, account in read if r.queue == group.queue and account == group.account]
    return rows[:group.limit]


def _read(conn, planner: FairShare, batch: int, few_first: bool) -> tuple[Outlook, Plan, list[list[Relayed]]]:
    """The pass's outlook, its plan, and the rows of each of the plan's groups, locked: from
    ``_few``'s one read if ``few_first`` (the pass before emptied the outbox) and few jobs are
    pending, else from the probe and a take per group (module docstring)."""
    if few_first:
        few = _few(conn)
        if few is not None:
            outlook, read = few
            plan = planner.plan(outlook, batch)
            return outlook, plan, [_grouped(read, g) for g in plan.groups]
    outlook = probe(conn)
    plan = planner.plan(outlook, batch)
    return outlook, plan, [_take(conn, g) for g in plan.groups]


def _emptied(outlook: Outlook, plan: Plan, taken: list[list[Relayed]], used: list[int]) -> bool:
    """Whether a pass left nothing pending that it saw: every (queue, account) waiting was
    dealt a group, each group had fewer jobs than turns, and every job read was published."""
    waiting = sum(len(accounts) for accounts in outlook.waiting.values())
    return (len(plan.groups) == waiting
            and all(len(rows) < g.limit and len(rows) == n for g, rows, n in zip(plan.groups, taken, used)))


def _take(conn, group: Group) -> list[Relayed]:
    """The group's oldest pending jobs, locked (skipping rows another publisher holds)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE SKIP LOCKED"
    account, params = ("account IS NULL", (group.queue,)) if group.account is None else \
        (f"account = {mark}", (group.queue, group.account))
    sql = (f"SELECT {_COLUMNS} FROM enstratus_job WHERE status = '{PENDING}' AND queue = {mark} "
           f"AND {account} ORDER BY job_id LIMIT {int(group.limit)}{lock}")
    return [Relayed(*r) for r in conn.exec_driver_sql(sql, params)]


def _interleaved(taken: list[list[Relayed]], order, batch: int) -> tuple[list[Relayed], list[int]]:
    """At most ``batch`` of the groups' jobs, in the order their turns were dealt (a group short
    of jobs skips its turn), and how many of each group that is. Rows read beyond the batch
    stay pending, unchanged."""
    cursors = [iter(rows) for rows in taken]
    used = [0] * len(taken)
    out: list[Relayed] = []
    # the turns dealt may be many more than the rows read (a lone job's pass deals a window)
    last = min(batch, sum(len(rows) for rows in taken))
    for i in order:
        if len(out) >= last:
            break
        row = next(cursors[i], None)
        if row is not None:
            out.append(row)
            used[i] += 1
    return out, used


@contextmanager
def _transaction(engine: sa.Engine, held: sa.Connection | None) -> Iterator[sa.Connection]:
    """A transaction on ``held`` (the publisher's own connection, ``db/held_connection.py``),
    else on a connection borrowed from the pool."""
    if held is None:
        with engine.begin() as conn:
            yield conn
    else:
        with held.begin():
            yield held


def relay(engine: sa.Engine, planner: FairShare, batch: int,
          publish: Callable[[list[Relayed]], None], held: sa.Connection | None = None) -> RelayPass:
    """One pass (module docstring). ``publish`` returns once the broker confirmed, or raises
    ``PublishError`` naming the unconfirmed: those stay pending, the rest are marked queued.
    ``held``: a connection to run the pass's transaction on (none open on it), else the pool's."""
    few_first, planner.outbox_emptied = planner.outbox_emptied, False   # until this pass shows it
    with _transaction(engine, held) as conn:
        outlook, plan, taken = _read(conn, planner, batch, few_first)
        if not plan.groups:
            planner.outbox_emptied = not outlook.waiting
            return RelayPass(0, False)
        jobs, used = _interleaved(taken, plan.order, plan.batch)
        failure = None
        confirmed = []
        if jobs:
            pathtrace.stamp("publisher.read", (j.job_id for j in jobs))
            try:
                publish(jobs)
                confirmed = [j.job_id for j in jobs]
            except PublishError as exc:
                failure = exc
                unconfirmed = {str(i) for i in exc.unconfirmed}
                confirmed = [j.job_id for j in jobs if str(j.job_id) not in unconfirmed]
            pathtrace.stamp("publisher.confirmed", confirmed)
            if confirmed:
                driver.execute(
                    conn, f"UPDATE enstratus_job SET status = '{QUEUED}', queued_timestamp = {int(now_ms())} "
                    f"WHERE job_id IN ({', '.join(str(int(i)) for i in confirmed)}) AND status = '{PENDING}'")
    pathtrace.stamp("publisher.marked", confirmed)
    if failure is not None:
        raise failure
    planner.outbox_emptied = _emptied(outlook, plan, taken, used)
    return RelayPass(len(jobs), planner.settle(plan, [len(t) for t in taken], used))
