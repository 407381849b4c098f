"""Persistence schema 1: objects and their index entries (``persist/sql_store.py``).

Names and string index values are UTF-8 bytes (VARBINARY / BLOB), so every engine compares them
byte by byte. A database the hand-versioned releases made (``persist_meta`` at 1) is adopted:
stamped, and ``persist_meta`` dropped.

Revision ID: persist_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from enstratus_workers.db.migrations import legacy

revision = "persist_0001"
down_revision = None
branch_labels = None
depends_on = None

_MYSQL = ("mysql", "mariadb")
_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _bytes(length: int):
    return sa.LargeBinary().with_variant(mysql.VARBINARY(length), *_MYSQL)


def upgrade() -> None:
    if legacy.version() is not None:
        legacy.adopt("persist")
        return
    op.create_table(
        "persist_objects",
        sa.Column("bucket", _bytes(200), primary_key=True),
        sa.Column("key", _bytes(512), primary_key=True),
        sa.Column("value", sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("schema", sa.Integer, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        **_OPTIONS,
    )
    op.create_table(
        "persist_indexes",
        sa.Column("bucket", _bytes(200), primary_key=True),
        sa.Column("key", _bytes(512), primary_key=True),
        sa.Column("name", _bytes(128), primary_key=True),
        sa.Column("value_bin", _bytes(1024), nullable=True),
        sa.Column("value_int", sa.BigInteger, nullable=True),
        **_OPTIONS,
    )
    op.create_index("ix_persist_indexes_bin", "persist_indexes", ["bucket", "name", "value_bin", "key"])
    op.create_index("ix_persist_indexes_int", "persist_indexes", ["bucket", "name", "value_int", "key"])


def downgrade() -> None:
    op.drop_table("persist_indexes")
    op.drop_table("persist_objects")
