"""The tables of the provisioning and analytics databases, as the code reads and writes them.

They are created and migrated by the Alembic chains ``provisioning`` and ``analytics``
(``db/migrate.py``, revisions in ``db/migrations/versions/``): a change here needs a revision
there, and ``tests/unit/test_migrations.py`` checks that the two agree.
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

from .identity import IdentityString

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
