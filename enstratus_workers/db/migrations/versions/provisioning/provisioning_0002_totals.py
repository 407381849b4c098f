"""Provisioning 0002: the totals that survive retention, and the pruning lease.

``enstratus_job_total`` (jobs per finished status), ``enstratus_job_pruned`` (jobs pruned since
the Jobs page's reset) and ``enstratus_lease`` (one pruner of the fleet at a time). The totals
are counted once from the rows the database holds (``schema.seed_provisioning_totals``).

Revision ID: provisioning_0002
Revises: provisioning_0001
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db import schema
from enstratus_workers.db.identity import IdentityString

revision = "provisioning_0002"
down_revision = "provisioning_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enstratus_job_total",
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "enstratus_job_pruned",
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("since_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("jobs", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "enstratus_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", IdentityString(200), nullable=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    for statement in schema.seed_provisioning_totals():
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("enstratus_lease")
    op.drop_table("enstratus_job_pruned")
    op.drop_table("enstratus_job_total")
