"""The provisioning and analytics databases, opened together with their schemas migrated to head."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..clock import now_ms  # re-exported: db.now_ms has callers
from ..config.settings import WorkerSettings
from ..errors import DatabaseError
from ..jobs import wakeup
from ..layout import Layout
from .analytics import Event, EventStore
from .desired import DesiredState, DesiredStateCache
from .engine import make_engine
from .heartbeats import Heartbeat, HeartbeatStore
from .jobs import DeliveryRow, Job, JobStore, NewJob, Outcome, Started
from .migrate import upgrade

__all__ = ["Databases", "open_databases", "DeliveryRow", "Job", "JobStore", "NewJob", "Outcome", "Started",
           "Event", "EventStore", "Heartbeat", "HeartbeatStore", "DesiredState", "DesiredStateCache", "now_ms"]


@dataclass
class Databases:
    provisioning: sa.Engine
    analytics: sa.Engine
    jobs: JobStore
    events: EventStore
    heartbeats: HeartbeatStore
    desired: DesiredStateCache    # which worker types and queues exist (db/desired.py)
    ringers: list = field(default_factory=list)   # wakeup.Ringer: publishers (pending), waiters (recorded)

    def ping(self) -> dict[str, str | None]:
        """``{"provisioning": None|error, "analytics": None|error}``: None means it answered."""
        out = {}
        for name, engine in (("provisioning", self.provisioning), ("analytics", self.analytics)):
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                out[name] = None
            except sa.exc.SQLAlchemyError as exc:
                out[name] = f"{type(exc.orig or exc).__name__}: {str(exc.orig or exc).splitlines()[0][:200]}"
        return out

    def close(self) -> None:
        self.provisioning.dispose()
        self.analytics.dispose()
        for ringer in self.ringers:
            ringer.close()


def open_databases(worker: WorkerSettings, layout: Layout, *, ensure: bool = True) -> Databases:
    """Engines for both databases; with ``ensure`` their chains (provisioning, admin, analytics)
    are first brought to head under the schema lock (``db/migrate.py``)."""
    prov = make_engine(worker.provisioning_url.reveal(), layout)
    anal = make_engine(worker.analytics_url.reveal(), layout)
    if ensure:
        try:
            try:
                for engine, chain in ((prov, "provisioning"), (prov, "admin"), (anal, "analytics")):
                    upgrade(engine, chain)
            except sa.exc.SQLAlchemyError as exc:
                raise DatabaseError(f"cannot prepare the databases: {type(exc).__name__}: "
                                    f"{str(getattr(exc, 'orig', exc)).splitlines()[0][:200]}") from exc
        except BaseException:
            prov.dispose()
            anal.dispose()
            raise
    ringer = wakeup.ringer_for(layout.run_dir)
    waiters = wakeup.ringer_for(layout.run_dir, wakeup.WAITER)
    owners = wakeup.ringer_for(layout.run_dir, wakeup.SUBSCRIBER)
    jobs = JobStore(prov, ringer.ring if ringer else None, waiters.ring if waiters else None,
                    owners.ring if owners else None, functools.partial(ringer.ring, room=True) if ringer else None)
    return Databases(prov, anal, jobs, EventStore(anal), HeartbeatStore(prov, worker.host_name),
                     DesiredStateCache(prov, worker, prepare=ensure), [r for r in (ringer, waiters, owners) if r])
