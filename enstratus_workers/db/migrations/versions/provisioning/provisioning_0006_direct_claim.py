"""Provisioning 0006: a submitter may publish its own job (``jobs/direct.py``).

``enstratus_job`` gets ``claimed_until_ms``: a pending job whose submitter claimed it in the
insert's transaction, to publish it right after the commit, is skipped by the publishers' relay
until then (``db/outbox.py``); a submitter that died before publishing costs only the claim's
few seconds. One nullable column: no row is rewritten on SQLite; on MariaDB an instant ADD COLUMN.

Revision ID: provisioning_0006
Revises: provisioning_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "provisioning_0006"
down_revision = "provisioning_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("enstratus_job", sa.Column("claimed_until_ms", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enstratus_job") as batch:
        batch.drop_column("claimed_until_ms")
