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


versions_provisioning = _version_table(provisioning)
versions_analytics = _version_table(analytics)

COMPONENTS = {
    "provisioning": (provisioning, versions_provisioning, 2),
    "analytics": (analytics, versions_analytics, 2),
}



def _provisioning_1_to_2(conn: sa.Connection) -> None:
    """Jobs get an ``owner`` (one subscriber per attempt); identities compare byte for byte."""
    owner = jobs.c.owner.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE enstratus_job ADD COLUMN owner {owner} NULL")
    make_exact(conn, jobs)
    make_exact(conn, heartbeats)


# component -> {from_version: callable(connection)} upgrading one step.
MIGRATIONS: dict[str, dict[int, object]] = {
    "provisioning": {1: _provisioning_1_to_2},
    # 1 -> 2 added enstratus_server_event; create_all above has already created it.
    "analytics": {1: lambda conn: None},
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
