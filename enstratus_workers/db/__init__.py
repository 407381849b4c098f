"""The provisioning and analytics databases, opened together with their schemas migrated to head."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..backoff import Backoff
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

log = logging.getLogger(__name__)

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


#: Tries of the schema preparation at a daemon's start, and the pause before each further one.
PREPARE_TRIES = 3
PREPARE_BACKOFF = Backoff(first=0.5, cap=2.0, jitter="equal")


def _prepare(chains) -> None:
    """Bring each (engine, chain) to head. An error of the server or of the connection
    (``OperationalError``, ``InternalError``: a node restarting, a lost connection, or the
    server failing on its own temporary file, seen on MariaDB 10.11) is tried again a few times,
    as the upgrade under its lock is safe to run again: it stops a daemon's start only if it
    lasts. Any other error (a refused statement, a schema newer than the code) stops it at once."""
    for attempt in range(1, PREPARE_TRIES + 1):
        try:
            for engine, chain in chains:
                upgrade(engine, chain)
            return
        except sa.exc.SQLAlchemyError as exc:
            said = f"{type(exc).__name__}: {str(getattr(exc, 'orig', exc)).splitlines()[0][:200]}"
            if attempt == PREPARE_TRIES or not isinstance(exc, (sa.exc.OperationalError, sa.exc.InternalError)):
                raise DatabaseError(f"cannot prepare the databases: {said}") from exc
            pause = PREPARE_BACKOFF.delay(attempt)
            log.warning("preparing the databases failed (%s); trying again in %.1f s", said, pause)
            time.sleep(pause)


def open_databases(worker: WorkerSettings, layout: Layout, *, ensure: bool = True) -> Databases:
    """Engines for both databases; with ``ensure`` their chains (provisioning, admin, analytics)
    are first brought to head under the schema lock (``db/migrate.py``)."""
    prov = make_engine(worker.provisioning_url.reveal(), layout)
    anal = make_engine(worker.analytics_url.reveal(), layout)
    if ensure:
        try:
            _prepare(((prov, "provisioning"), (prov, "admin"), (anal, "analytics")))
        except BaseException:
            prov.dispose()
            anal.dispose()
            raise
    ringer = wakeup.ringer_for(layout.run_dir)
    waiters = wakeup.ringer_for(layout.run_dir, wakeup.WAITER)
    owners = wakeup.ringer_for(layout.run_dir, wakeup.SUBSCRIBER)
    if owners and ringer:
        # a cancel reaches other hosts' subscribers through this host's publisher, until a
        # broker ringer of this process's own is attached (mq/amqp_wake.ring_through_broker)
        owners.otherwise(ringer.ring_cancel)
    jobs = JobStore(prov, ringer.ring if ringer else None, waiters.ring_done if waiters else None,
                    owners.ring if owners else None, functools.partial(ringer.ring, room=True) if ringer else None)
    return Databases(prov, anal, jobs, EventStore(anal), HeartbeatStore(prov, worker.host_name),
                     DesiredStateCache(prov, worker, prepare=ensure), [r for r in (ringer, waiters, owners) if r])
