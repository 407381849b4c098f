"""Admin 0002: where each worker type runs, and the hosts of the fleet.

``enstratus_worker_instance_placement`` (an instance's targets, ``host:NAME`` / ``tag:TAG``; none:
every host, as every instance ran before) and ``enstratus_host`` (every host that ran a daemon
against this database, with its tags: what a placement may name). Two new tables, no change to
the existing ones. Daemons register their host at start, so ``enstratus_host`` fills as the
fleet restarts on this release; nothing is copied in.

Revision ID: admin_0002
Revises: admin_0001
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.identity import IdentityString

revision = "admin_0002"
down_revision = "admin_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enstratus_worker_instance_placement",
        sa.Column("instance_id", sa.BigInteger, primary_key=True),
        sa.Column("target", IdentityString(68), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_table(
        "enstratus_host",
        sa.Column("name", IdentityString(63), primary_key=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enstratus_host")
    op.drop_table("enstratus_worker_instance_placement")
