"""KM schema 2: credentials, encrypted at rest, with exact identities and spelling digests.

The schema the hand-versioned releases called KM version 2; a database they made is adopted
(``legacy.adopt``: from version 1 its rows are read to fill the digests) instead of created.

Revision ID: km_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from enstratus_workers.db.identity import IdentityString
from enstratus_workers.db.migrations import legacy

revision = "km_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if legacy.version() is not None:
        legacy.adopt("km")
        return
    op.create_table(
        "credentials",
        sa.Column("account", IdentityString(128), primary_key=True),
        sa.Column("name", IdentityString(191), primary_key=True),
        sa.Column("kind", IdentityString(32), nullable=False),
        sa.Column("account_key", IdentityString(64), nullable=False),
        sa.Column("name_key", IdentityString(64), nullable=False),
        sa.Column("secret", sa.LargeBinary(512 * 1024), nullable=False),  # MEDIUMBLOB on MySQL
        sa.Column("master_key_id", sa.String(16), nullable=False),
        sa.Column("metadata", sa.Text(1 << 20), nullable=False),          # MEDIUMTEXT on MySQL
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_index("ux_credentials_spelling", "credentials", ["account_key", "name_key"], unique=True)


def downgrade() -> None:
    op.drop_table("credentials")
