"""Provisioning 0004: the job's account, the relay's index, and the pauses.

``enstratus_job.account`` (the tenant a job is for; NULL: none), the index
``ix_enstratus_job_relay`` (status, queue, account, job_id) that the fair relay reads
(``db/outbox.py``), and ``enstratus_pause`` (queues and accounts paused fleet-wide,
``db/pauses.py``). Existing jobs get no account. On MariaDB the column is added in place
(nullable, no default to write); the index is built online, which takes a while on a large
``enstratus_job``.

Revision ID: provisioning_0004
Revises: provisioning_0003
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.identity import IdentityString

revision = "provisioning_0004"
down_revision = "provisioning_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("enstratus_job", sa.Column("account", IdentityString(100), nullable=True))
    op.create_index("ix_enstratus_job_relay", "enstratus_job", ["status", "queue", "account", "job_id"])
    op.create_table(
        "enstratus_pause",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", IdentityString(100), primary_key=True),
        sa.Column("since_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("enstratus_pause")
    op.drop_index("ix_enstratus_job_relay", table_name="enstratus_job")
    op.drop_column("enstratus_job", "account")
