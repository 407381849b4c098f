"""Finding jobs: the filters of ``GET /jobs`` and of the Jobs page, and the Dead tab's list.

Newest first, at most ``limit`` rows. A status filter reads through the (status, job_id) index;
the others narrow the newest-first scan of the job table, which stops at ``limit`` matches (on
a large table, a filter that matches nothing recent reads more rows: pair it with a status
to stay on the index). Values compare exactly, as every identity of the service does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import sqlalchemy as sa

from .jobs import Job
from .retry import retried
from .schema import jobs as T


@dataclass(frozen=True)
class JobFilter:
    """What the jobs listed must match; None matches anything."""

    status: str | None = None
    action: str | None = None
    queue: str | None = None
    account: str | None = None
    job_id: int | None = None

    def as_query(self) -> dict:
        """The filters that are set, by name (the page's links carry them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _matching(q, where: JobFilter):
    for name, value in where.as_query().items():
        q = q.where(T.c[name] == value)
    return q


@retried(idempotent=True)
def find_jobs(engine: sa.Engine, where: JobFilter, limit: int = 50) -> list[Job]:
    """The newest jobs matching ``where``."""
    q = _matching(sa.select(T).order_by(T.c.job_id.desc()).limit(limit), where)
    with engine.connect() as conn:
        return [Job(**r) for r in conn.execute(q).mappings()]


@retried(idempotent=True)
def count_jobs(engine: sa.Engine, where: JobFilter) -> int:
    """How many jobs match ``where`` (the rows there are: pruned jobs are not counted)."""
    q = _matching(sa.select(sa.func.count()).select_from(T), where)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar())
