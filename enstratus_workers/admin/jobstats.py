"""Job counts by status since the operator last reset them (the Jobs page's figures).

A reset only remembers when it happened (``InstanceStore.reset_stats``); no job row changes, so
the CLI, the metrics and other admin daemons still see every job. Counted are the jobs created
since then: one grouped query the database answers from its own rows.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..db.schema import STATUSES
from ..db.schema import jobs as J


def counts_since(engine: sa.Engine, since_ms: int) -> dict[str, int]:
    """``{status: jobs created at or after since_ms}``, every status present (0 if none)."""
    q = sa.select(J.c.status, sa.func.count()).group_by(J.c.status)
    if since_ms:
        q = q.where(J.c.created_timestamp >= since_ms)
    with engine.connect() as conn:
        found = {status: int(n) for status, n in conn.execute(q)}
    return {s: found.get(s, 0) for s in STATUSES}


def stats(store, engine: sa.Engine) -> dict:
    since = store.stats_since()
    counts = counts_since(engine, since)
    return {"since_ms": since, "counts": counts, "total": sum(counts.values())}
