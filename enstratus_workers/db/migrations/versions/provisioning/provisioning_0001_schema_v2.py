"""Provisioning schema 2: jobs (the outbox) and daemon heartbeats.

The schema the hand-versioned releases called provisioning version 2. A database they made is
adopted (``legacy.adopt``: stamped at 2, brought up from 1) instead of created.

Revision ID: provisioning_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from enstratus_workers.db.identity import IdentityString
from enstratus_workers.db.migrations import legacy

revision = "provisioning_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid
_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")


def upgrade() -> None:
    if legacy.version() is not None:
        legacy.adopt("provisioning")
        return
    op.create_table(
        "enstratus_job",
        sa.Column("job_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("action", IdentityString(200), nullable=False),
        sa.Column("arguments", _LONG_TEXT, nullable=False),
        sa.Column("queue", IdentityString(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("idempotency_key", IdentityString(200), nullable=True, unique=True),
        sa.Column("created_timestamp", sa.BigInteger, nullable=False),
        sa.Column("queued_timestamp", sa.BigInteger, nullable=True),
        sa.Column("start_timestamp", sa.BigInteger, nullable=True),
        sa.Column("end_timestamp", sa.BigInteger, nullable=True),
        sa.Column("worker", IdentityString(200), nullable=True),
        sa.Column("owner", IdentityString(200), nullable=True),
        sa.Column("result", _LONG_TEXT, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_enstratus_job_status", "enstratus_job", ["status", "job_id"])
    op.create_table(
        "enstratus_heartbeat",
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


def downgrade() -> None:
    op.drop_table("enstratus_heartbeat")
    op.drop_table("enstratus_job")
