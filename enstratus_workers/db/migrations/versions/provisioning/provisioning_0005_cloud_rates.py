"""Provisioning 0005: the cloud API limits' budget, shared by the fleet.

``enstratus_cloud_rate``: one row per (provider, account) with its next free turn, its rate while
slowed by a throttle, and its counts (``db/cloud_rates.py``). A new table: nothing is rewritten.

Revision ID: provisioning_0005
Revises: provisioning_0004
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.identity import IdentityString

revision = "provisioning_0005"
down_revision = "provisioning_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enstratus_cloud_rate",
        sa.Column("provider", IdentityString(100), primary_key=True),
        sa.Column("account", IdentityString(200), primary_key=True),
        sa.Column("next_us", sa.BigInteger, nullable=False),
        sa.Column("rate", sa.Double, nullable=True),
        sa.Column("slowed_us", sa.BigInteger, nullable=False),
        sa.Column("eased_us", sa.BigInteger, nullable=False),
        sa.Column("turns", sa.BigInteger, nullable=False),
        sa.Column("throttles", sa.BigInteger, nullable=False),
        sa.Column("deferrals", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enstratus_cloud_rate")
