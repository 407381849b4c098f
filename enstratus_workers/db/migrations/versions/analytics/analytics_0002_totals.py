"""Analytics 0002: attempts and durations per (action, outcome), kept as totals.

``enstratus_action_total`` is what ``/metrics`` reads, so a scrape costs the same at any number
of events; it is counted once from the events the database holds
(``schema.seed_analytics_totals``).

Revision ID: analytics_0002
Revises: analytics_0001
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db import schema
from enstratus_workers.db.identity import IdentityString

revision = "analytics_0002"
down_revision = "analytics_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enstratus_action_total",
        sa.Column("action", IdentityString(200), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("attempts", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in schema.BUCKET_COLUMNS),
    )
    for statement in schema.seed_analytics_totals():
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("enstratus_action_total")
