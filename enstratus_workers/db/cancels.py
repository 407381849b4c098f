"""The cancel parts of the job store: asking to cancel a job, and finding the cancels of jobs held.

A cancel is decided on the row alone (``lifecycle.cancel_verdict``) and written as a
compare-and-set on the status it read, so it can race the relay, a subscriber's mark or an
outcome without a lock held across them:

- a ``pending`` or ``queued`` job ends ``cancelled`` at once (end time and request time now, one
  more in the ``cancelled`` total). Its message, if one is on the broker, finds a finished row
  when delivered and is acked away as a stale duplicate. If a subscriber had already handed it
  to a worker (the row is marked running only after a second), that subscriber finds the cancel
  in its next look (``requested_among``) and stops the worker as for a running job;
- a ``running`` job (or one going back to the outbox to carry its compensation) gets
  ``cancel_requested_ms``: its owner subscriber finds it there, tells the worker, and records
  the attempt ``cancelled`` once the action stopped and its compensation ran;
- a finished job is left as it is: the caller says so (the API's 409).

Both run under ``db/retry.py`` (a Galera certification conflict or a lost writer node runs the
transaction again): the cancel's writes are guarded by what they read, so a second try of one
whose commit did happen changes nothing and counts nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import sqlalchemy as sa

from ..clock import now_ms
from ..jobs import lifecycle
from .retry import retried
from .schema import jobs as T

#: a row that changes between the read and the compare-and-set is read again, this many times
_TRIES = 5


@dataclass(frozen=True)
class CancelAnswer:
    """What a cancel did: ``verdict`` is ``cancelled``, ``stopping``, ``finished`` or ``unknown``
    (no such job: ``job`` is None); ``was`` the status it found; ``job`` the row as it reads
    after the cancel."""

    verdict: str
    job: object
    was: str | None = None

    UNKNOWN = "unknown"


@retried(idempotent=True)
def cancel(engine: sa.Engine, job_id: int, add_totals: Callable, get: Callable) -> CancelAnswer:
    """Cancel ``job_id`` (module docstring); the job as it reads afterwards."""
    verdict, was = CancelAnswer.UNKNOWN, None
    for _ in range(_TRIES):
        with engine.begin() as conn:
            row = conn.execute(sa.select(T.c.status, T.c.cancel_requested_ms)
                               .where(T.c.job_id == job_id)).first()
            if row is None:
                return CancelAnswer(CancelAnswer.UNKNOWN, None)
            was = row.status
            verdict = lifecycle.cancel_verdict(row.status, row.cancel_requested_ms is not None)
            if verdict == lifecycle.CANCEL_FINISHED or (verdict == lifecycle.CANCEL_ASK
                                                         and row.cancel_requested_ms is not None):
                break
            now = now_ms()
            guard = [T.c.job_id == job_id, T.c.status == row.status, T.c.cancel_requested_ms.is_(None)]
            if verdict == lifecycle.CANCEL_NOW:
                changed = conn.execute(T.update().where(*guard).values(
                    status=lifecycle.CANCELLED, cancel_requested_ms=now, end_timestamp=now)).rowcount
                if changed:
                    add_totals(conn, {lifecycle.CANCELLED: 1})
            else:
                changed = conn.execute(T.update().where(*guard).values(cancel_requested_ms=now)).rowcount
            if changed:
                break
    return CancelAnswer(verdict, get(job_id), was)


@retried(idempotent=True)
def requested_among(engine: sa.Engine, job_ids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """``{job id: (status, attempts)}`` of those of ``job_ids`` whose cancel was requested: one
    query by primary key (a subscriber's look at the jobs it holds, about every second)."""
    ids = sorted({int(i) for i in job_ids})
    found: dict[int, tuple[str, int]] = {}
    with engine.connect() as conn:
        for i in range(0, len(ids), 1000):
            chunk = ", ".join(map(str, ids[i:i + 1000]))
            found.update((r[0], (r[1], r[2])) for r in conn.exec_driver_sql(
                f"SELECT job_id, status, attempts FROM enstratus_job WHERE job_id IN ({chunk}) "
                "AND cancel_requested_ms IS NOT NULL"))
    return found
