"""Provisioning 0003: cancelling a job, and deferring one without using an attempt.

``enstratus_job`` gets ``cancel_requested_ms`` (when an operator asked to cancel it: the owner
subscriber of a running job finds it there), ``not_before_ms`` (a deferred job is relayed no
sooner than this) and ``deferrals`` (how often its actions deferred it). Three nullable or
defaulted columns: no row is rewritten on SQLite; on MariaDB an instant ADD COLUMN where the
server supports it.

Revision ID: provisioning_0003
Revises: provisioning_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "provisioning_0003"
down_revision = "provisioning_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("enstratus_job", sa.Column("cancel_requested_ms", sa.BigInteger, nullable=True))
    op.add_column("enstratus_job", sa.Column("not_before_ms", sa.BigInteger, nullable=True))
    op.add_column("enstratus_job", sa.Column("deferrals", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("enstratus_job") as batch:
        batch.drop_column("deferrals")
        batch.drop_column("not_before_ms")
        batch.drop_column("cancel_requested_ms")
