"""The KM's table in the ``credentials`` database.

Created and migrated by the Alembic chain ``km`` (``db/migrate.py``; its version table
``enstratus_migration_km`` keeps it apart from the other chains when ``credentials_url`` points at
a shared database). Its first revision is the hand-versioned KM schema 2, and adopts a database
those releases made (``db/migrations/legacy.py``):

- **1**: account, name and kind in the server's default collation (on MariaDB/MySQL case-,
  accent- and trailing-space-insensitive, so one account's lookups found another's row).
- **2**: account, name and kind are ``IdentityString`` (byte for byte); ``account_key`` and
  ``name_key`` hold the digests of their folded spellings (``spelling.py``), unique together,
  so two spellings of one credential cannot both be created.
"""

from __future__ import annotations

import sqlalchemy as sa

from enstratus_workers.db.identity import IdentityString
from enstratus_workers.km.protocol import MAX_ACCOUNT, MAX_NAME, MAX_SECRET
from enstratus_workers.km.spelling import DIGEST_SIZE

SPELLING_INDEX = "ux_credentials_spelling"

metadata_obj = sa.MetaData()
credentials = sa.Table(
    "credentials", metadata_obj,
    sa.Column("account", IdentityString(MAX_ACCOUNT), primary_key=True),
    sa.Column("name", IdentityString(MAX_NAME), primary_key=True),
    sa.Column("kind", IdentityString(32), nullable=False),
    sa.Column("account_key", IdentityString(DIGEST_SIZE), nullable=False),
    sa.Column("name_key", IdentityString(DIGEST_SIZE), nullable=False),
    sa.Column("secret", sa.LargeBinary(MAX_SECRET * 2), nullable=False),  # MEDIUMBLOB on MySQL
    sa.Column("master_key_id", sa.String(16), nullable=False),
    sa.Column("metadata", sa.Text(1 << 20), nullable=False),               # MEDIUMTEXT on MySQL
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Index(SPELLING_INDEX, "account_key", "name_key", unique=True),
    mysql_charset="utf8mb4",
)
