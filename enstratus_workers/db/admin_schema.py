"""The tables of the desired state, as the code reads and writes them (the Alembic chain "admin",
``db/migrate.py``; they live in the provisioning database beside the jobs).

- ``enstratus_worker_instance``: one per worker type: its process bounds per host, whether it
  runs;
- ``enstratus_worker_instance_queue``: which queues each instance consumes, in order;
- ``enstratus_admin_queue``: the queues the operator declared (listing them needs a registry:
  the transport contract can declare and count queues but not enumerate them);
- ``enstratus_admin_state``: small named values (when the job statistics were last reset,
  whether the seed was done).

A change here needs a revision in ``db/migrations/versions/admin/``; ``tests/unit/
test_migrations.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..config.limits import NAME_MAX
from .identity import IdentityString

metadata = sa.MetaData()

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

instances = sa.Table(
    "enstratus_worker_instance", metadata,
    sa.Column("instance_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("type", IdentityString(NAME_MAX), nullable=False, unique=True),
    sa.Column("min_processes", sa.Integer, nullable=False),
    sa.Column("max_processes", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

instance_queues = sa.Table(
    "enstratus_worker_instance_queue", metadata,
    sa.Column("instance_id", sa.BigInteger, primary_key=True),
    sa.Column("queue", IdentityString(NAME_MAX), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Index("ix_enstratus_worker_instance_queue_queue", "queue"),
)

declared_queues = sa.Table(
    "enstratus_admin_queue", metadata,
    sa.Column("name", IdentityString(NAME_MAX), primary_key=True),
    sa.Column("exchange", sa.String(200), nullable=True),
    sa.Column("routing_key", sa.String(200), nullable=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

state = sa.Table(
    "enstratus_admin_state", metadata,
    sa.Column("name", IdentityString(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
