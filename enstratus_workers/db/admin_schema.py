"""The tables of the desired state, as the code reads and writes them (the Alembic chain "admin",
``db/migrate.py``; they live in the provisioning database beside the jobs).

- ``enstratus_worker_instance``: one per worker type: its process bounds per host, whether it
  runs;
- ``enstratus_worker_instance_queue``: which queues each instance consumes, in order;
- ``enstratus_worker_instance_placement``: on which hosts each instance runs, as the targets of
  ``fleet/placement.py`` (``host:web-1``, ``tag:winxp``) in order; none: every host;
- ``enstratus_admin_queue``: the queues the operator declared (listing them needs a registry:
  the transport contract can declare and count queues but not enumerate them);
- ``enstratus_admin_state``: small named values (when the job statistics were last reset,
  whether the seed was done);
- ``enstratus_host``: every host that ever ran a daemon against this database, with its tags
  (``db/hosts.py``): what a placement may name, long after the host's heartbeats are gone;
- ``enstratus_audit``: the operators' actions (``db/audit.py``).

A change here needs a revision in ``db/migrations/versions/admin/``; ``tests/unit/
test_migrations.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..config.limits import HOST_NAME_MAX, NAME_MAX

PLACEMENT_TARGET_MAX = len("host:") + HOST_NAME_MAX   # the longest target: host:NAME
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

instance_placement = sa.Table(   # admin_0002
    "enstratus_worker_instance_placement", metadata,
    sa.Column("instance_id", sa.BigInteger, primary_key=True),
    sa.Column("target", IdentityString(PLACEMENT_TARGET_MAX), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
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

hosts = sa.Table(   # admin_0002
    "enstratus_host", metadata,
    sa.Column("name", IdentityString(HOST_NAME_MAX), primary_key=True),
    sa.Column("tags", sa.Text, nullable=False),          # comma-joined, in host.tags' order
    sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
)

audit_log = sa.Table(   # admin_0003
    "enstratus_audit", metadata,
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
    sa.Index("ix_enstratus_audit_time", "at_ms"),
    sa.Index("ix_enstratus_audit_action", "action", "audit_id"),
)
