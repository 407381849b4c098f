"""Admin 0003: the audit log of operator actions (``db/audit.py``).

Revision ID: admin_0003
Revises: admin_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "admin_0003"
down_revision = "admin_0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "enstratus_audit",
        sa.Column("audit_id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("client", sa.String(200), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("before_state", sa.Text, nullable=True),
        sa.Column("after_state", sa.Text, nullable=True),
    )
    op.create_index("ix_enstratus_audit_time", "enstratus_audit", ["at_ms"])
    op.create_index("ix_enstratus_audit_action", "enstratus_audit", ["action", "audit_id"])


def downgrade() -> None:
    op.drop_table("enstratus_audit")
