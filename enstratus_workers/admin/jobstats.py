"""Job counts by status since the operator last reset them (the Jobs page's figures).

A reset only remembers when it happened (``InstanceStore.reset_stats``); no job row changes, so
the CLI, the metrics and other admin daemons still see every job. Counted are the jobs created
since then, pruned ones included (``JobStore.counts``): before any reset from the job totals,
whatever the history; after one, from the rows created since that retention still keeps plus
the count of those it pruned (``db/retention.py``), so the figures do not drop when old
finished jobs are deleted.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..db.jobs import JobStore


def stats(store, engine: sa.Engine) -> dict:
    """The counts since the last reset (``store.stats_since()``), and their total."""
    since = store.stats_since()
    counts = JobStore(engine).counts(created_since_ms=since)
    return {"since_ms": since, "counts": counts, "total": sum(counts.values())}
