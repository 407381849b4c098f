"""Analytics 0003: what the pages show of history.

- ``enstratus_job_event`` gains ``error`` and ``host``: the job page's timeline shows, per
  attempt, where it ran and why it failed (older events keep NULL there).
- ``enstratus_server_event`` gets an index on ``job_id``: the job page lists its server events.
- ``enstratus_action_minute``: the action totals per minute, which the status page's charts of
  the last hour read; counted once from the events the database holds
  (``schema.seed_action_minutes``).

Revision ID: analytics_0003
Revises: analytics_0002
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db import schema
from enstratus_workers.db.identity import IdentityString

revision = "analytics_0003"
down_revision = "analytics_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("enstratus_job_event", sa.Column("error", sa.Text, nullable=True))
    op.add_column("enstratus_job_event", sa.Column("host", sa.String(200), nullable=True))
    op.create_index("ix_enstratus_server_event_job", "enstratus_server_event", ["job_id"])
    op.create_table(
        "enstratus_action_minute",
        sa.Column("minute_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("action", IdentityString(200), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("attempts", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in schema.BUCKET_COLUMNS),
    )
    for statement in schema.seed_action_minutes():
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("enstratus_action_minute")
    op.drop_index("ix_enstratus_server_event_job", "enstratus_server_event")
    op.drop_column("enstratus_job_event", "host")
    op.drop_column("enstratus_job_event", "error")
