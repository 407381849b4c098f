"""Analytics schema 2: one event per job attempt, one per server state change.

The schema the hand-versioned releases called analytics version 2; a database they made is
adopted (``legacy.adopt``) instead of created.

Revision ID: analytics_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.migrations import legacy

revision = "analytics_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if legacy.version() is not None:
        legacy.adopt("analytics")
        return
    op.create_table(
        "enstratus_job_event",
        sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_enstratus_job_event_job", "enstratus_job_event", ["job_id"])
    op.create_index("ix_enstratus_job_event_time", "enstratus_job_event", ["event_timestamp"])
    op.create_table(
        "enstratus_server_event",
        sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("server_id", sa.String(100), nullable=False),
        sa.Column("account", sa.String(200), nullable=True),
        sa.Column("old_state", sa.String(32), nullable=True),
        sa.Column("new_state", sa.String(32), nullable=False),
        sa.Column("job_id", sa.BigInteger, nullable=True),
        sa.Column("action", sa.String(200), nullable=True),
        sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_enstratus_server_event_server", "enstratus_server_event", ["server_id"])


def downgrade() -> None:
    op.drop_table("enstratus_server_event")
    op.drop_table("enstratus_job_event")
