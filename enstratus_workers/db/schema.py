"""The tables of the provisioning and analytics databases, and their schema versions.

Each database records the version of each component's schema in ``enstratus_schema_version``,
so a later release can migrate (``MIGRATIONS``) and an old release refuses a newer schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# The statuses live with the rest of a job's life; imported here for the readers of the schema.
from enstratus_workers.jobs.lifecycle import (  # noqa: F401
    ACTIVE,
    CANCELLED,
    DEAD,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
)
from enstratus_workers.jobs.messages import MAX_ACTION_CHARS

from ..errors import DatabaseError
from .identity import IdentityString, make_exact

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid
_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")

provisioning = sa.MetaData()
analytics = sa.MetaData()

jobs = sa.Table(
    "enstratus_job", provisioning,
    sa.Column("job_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("action", IdentityString(MAX_ACTION_CHARS), nullable=False),
    sa.Column("arguments", _LONG_TEXT, nullable=False),
    sa.Column("queue", IdentityString(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("idempotency_key", IdentityString(200), nullable=True, unique=True),
    sa.Column("created_timestamp", sa.BigInteger, nullable=False),
    sa.Column("queued_timestamp", sa.BigInteger, nullable=True),
    sa.Column("start_timestamp", sa.BigInteger, nullable=True),
    sa.Column("end_timestamp", sa.BigInteger, nullable=True),
    sa.Column("worker", IdentityString(200), nullable=True),
    # the subscriber process that holds the current attempt (see db/jobs.py: one owner per attempt)
    sa.Column("owner", IdentityString(200), nullable=True),
    sa.Column("result", _LONG_TEXT, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_enstratus_job_status", "status", "job_id"),
)

heartbeats = sa.Table(
    "enstratus_heartbeat", provisioning,
    sa.Column("daemon", IdentityString(32), primary_key=True),
    sa.Column("name", IdentityString(200), primary_key=True),
    sa.Column("host", IdentityString(200), primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("beat_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("details", sa.Text, nullable=True),
)

events = sa.Table(
    "enstratus_job_event", analytics,
    sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    sa.Index("ix_enstratus_job_event_job", "job_id"),
    sa.Index("ix_enstratus_job_event_time", "event_timestamp"),
)


server_events = sa.Table(
    "enstratus_server_event", analytics,
    sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("server_id", sa.String(100), nullable=False),
    sa.Column("account", sa.String(200), nullable=True),
    sa.Column("old_state", sa.String(32), nullable=True),
    sa.Column("new_state", sa.String(32), nullable=False),
    sa.Column("job_id", sa.BigInteger, nullable=True),
    sa.Column("action", sa.String(200), nullable=True),
    sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    sa.Index("ix_enstratus_server_event_server", "server_id"),
)


def _version_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "enstratus_schema_version", metadata,
        sa.Column("component", sa.String(50), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        extend_existing=True,
    )


# -- schema version 3: retention --------------------------------------------------------------
# Everything version 3 adds lives in this block (tables, seed rows, the 2 -> 3 migration), so it
# can become one Alembic revision as it stands. Old rows are pruned (db/retention.py); what the
# pages and the metrics count must survive that, and must cost the same at any history size, so
# the counts are kept as totals, written by the same transactions that change what they count.

#: Upper bounds (seconds) of the action-duration histogram, stored as columns of the totals
#: below: cloud calls take from ms to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BUCKET_COLUMNS = tuple(f"le_{i}" for i in range(len(DURATION_BUCKETS)))

job_totals = sa.Table(
    # jobs ever in each finished status, as they stand now (a redriven dead job leaves "dead"):
    # kept by JobStore's writes, untouched by pruning. Unfinished jobs are few, counted live.
    "enstratus_job_total", provisioning,
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("jobs", sa.BigInteger, nullable=False),
)

job_pruned = sa.Table(
    # jobs pruned that were created at or after the Jobs page's reset time ``since_ms`` (the one
    # in force when they were pruned): what that page adds to the rows still there.
    "enstratus_job_pruned", provisioning,
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("since_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("jobs", sa.BigInteger, nullable=False),
)

leases = sa.Table(
    # a job of the fleet that one daemon at a time may do (pruning): held until expires_ms
    "enstratus_lease", provisioning,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", IdentityString(200), nullable=True),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)

action_totals = sa.Table(
    # attempts per (action, outcome) ever recorded, their summed duration and a histogram (le_i:
    # attempts of at most DURATION_BUCKETS[i] s and more than the bound before, not cumulative):
    # kept by EventStore.record in the events' own transaction, untouched by pruning.
    "enstratus_action_total", analytics,
    sa.Column("action", IdentityString(200), primary_key=True),
    sa.Column("outcome", sa.String(16), primary_key=True),
    sa.Column("attempts", sa.BigInteger, nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
    *(sa.Column(c, sa.BigInteger, nullable=False) for c in BUCKET_COLUMNS),
)

RETENTION_LEASE = "retention"


def _seed_provisioning_3(conn: sa.Connection) -> None:
    """A total for every finished status, counted from the rows there are (none when new), and
    the pruning lease's row. Only what is missing is added: safe to run twice."""
    have = set(conn.execute(sa.select(job_totals.c.status)).scalars())
    found = dict(conn.execute(sa.select(jobs.c.status, sa.func.count())
                              .where(jobs.c.status.in_(TERMINAL)).group_by(jobs.c.status)).all())
    missing = [{"status": s, "jobs": int(found.get(s, 0))} for s in TERMINAL if s not in have]
    if missing:
        conn.execute(job_totals.insert(), missing)
    if conn.execute(sa.select(leases.c.name).where(leases.c.name == RETENTION_LEASE)).first() is None:
        conn.execute(leases.insert().values(name=RETENTION_LEASE, holder=None, expires_ms=0))


def _seed_analytics_3(conn: sa.Connection) -> None:
    """The action totals of the events there are (none when new), if none were kept yet."""
    if conn.execute(sa.select(action_totals.c.action).limit(1)).first() is not None:
        return
    per_bucket, low = [], None
    for bound in DURATION_BUCKETS:
        ms = bound * 1000
        within = events.c.duration_ms <= ms if low is None else sa.and_(events.c.duration_ms > low,
                                                                          events.c.duration_ms <= ms)
        per_bucket.append(sa.func.sum(sa.case((within, 1), else_=0)))
        low = ms
    q = (sa.select(events.c.action, events.c.outcome, sa.func.count(),
                   sa.func.coalesce(sa.func.sum(events.c.duration_ms), 0), *per_bucket)
         .group_by(events.c.action, events.c.outcome))
    rows = [dict(zip(("action", "outcome", "attempts", "duration_ms") + BUCKET_COLUMNS,
                     (a, o, *(int(v or 0) for v in rest))))
            for a, o, *rest in conn.execute(q)]
    if rows:
        conn.execute(action_totals.insert(), rows)


versions_provisioning = _version_table(provisioning)
versions_analytics = _version_table(analytics)

COMPONENTS = {
    "provisioning": (provisioning, versions_provisioning, 3),
    "analytics": (analytics, versions_analytics, 3),
}

#: component -> callable(connection) writing the rows a new database of this version starts with
SEEDS = {"provisioning": _seed_provisioning_3, "analytics": _seed_analytics_3}



def _provisioning_1_to_2(conn: sa.Connection) -> None:
    """Jobs get an ``owner`` (one subscriber per attempt); identities compare byte for byte."""
    owner = jobs.c.owner.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE enstratus_job ADD COLUMN owner {owner} NULL")
    make_exact(conn, jobs)
    make_exact(conn, heartbeats)


# component -> {from_version: callable(connection)} upgrading one step.
MIGRATIONS: dict[str, dict[int, object]] = {
    # 2 -> 3: create_all above has created the tables of version 3; the seeds fill them in
    "provisioning": {1: _provisioning_1_to_2, 2: _seed_provisioning_3},
    # 1 -> 2 added enstratus_server_event; create_all above has already created it.
    "analytics": {1: lambda conn: None, 2: _seed_analytics_3},
}


def ensure_schema(engine: sa.Engine, component: str) -> int:
    """Create the component's tables if missing, migrate them to this code's version; return it."""
    metadata, versions, current = COMPONENTS[component]
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        stored = conn.execute(
            sa.select(versions.c.version).where(versions.c.component == component)).scalar()
        if stored is None:
            conn.execute(versions.insert().values(component=component, version=current))
            SEEDS[component](conn)
            return current
        if stored > current:
            raise DatabaseError(
                f"the {component} database has schema version {stored}, newer than this release "
                f"understands ({current}); upgrade enstratus-workers")
        while stored < current:
            MIGRATIONS[component][stored](conn)
            stored += 1
            conn.execute(versions.update().where(versions.c.component == component)
                         .values(version=stored))
    return current
