"""Admin schema 2: the desired state of the worker pools (``db/instances.py``).

The schema the hand-versioned releases called admin version 2; a database they made is adopted
(``legacy.adopt``) instead of created.

Revision ID: admin_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.identity import IdentityString
from enstratus_workers.db.migrations import legacy

revision = "admin_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if legacy.version() is not None:
        legacy.adopt("admin")
        return
    op.create_table(
        "enstratus_worker_instance",
        sa.Column("instance_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("type", IdentityString(100), nullable=False, unique=True),
        sa.Column("min_processes", sa.Integer, nullable=False),
        sa.Column("max_processes", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "enstratus_worker_instance_queue",
        sa.Column("instance_id", sa.BigInteger, primary_key=True),
        sa.Column("queue", IdentityString(100), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_enstratus_worker_instance_queue_queue", "enstratus_worker_instance_queue", ["queue"])
    op.create_table(
        "enstratus_admin_queue",
        sa.Column("name", IdentityString(100), primary_key=True),
        sa.Column("exchange", sa.String(200), nullable=True),
        sa.Column("routing_key", sa.String(200), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "enstratus_admin_state",
        sa.Column("name", IdentityString(100), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    for table in ("enstratus_admin_state", "enstratus_admin_queue",
                  "enstratus_worker_instance_queue", "enstratus_worker_instance"):
        op.drop_table(table)
