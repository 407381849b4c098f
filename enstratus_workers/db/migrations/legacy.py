"""Databases made by the hand-versioned releases: how revision 1 of each chain recognises them.

Those releases kept a version per component in ``enstratus_schema_version`` (provisioning,
admin, analytics, km) or in ``persist_meta`` (persist). :data:`LAST` is the version each left
its tables at, which is what revision 1 of the chain creates: a database at that version is
stamped (nothing else runs), one at an older version is brought up by the old migration code,
kept here as it was. The old bookkeeping is removed in the same revision.

Tables without a version row (a start cut short between the two) count as version 1: every
step below is idempotent, so running one on tables already past it changes nothing.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from alembic import context, op

from ..identity import make_exact

log = logging.getLogger(__name__)

#: the hand version each chain's revision 1 stands for
LAST = {"provisioning": 2, "admin": 2, "analytics": 2, "km": 2, "persist": 1}
VERSIONS_TABLE = "enstratus_schema_version"
PERSIST_META = "persist_meta"
# a table every release of the chain had: present without a version row means version 1
_MARKER = {"provisioning": "enstratus_job", "admin": "enstratus_worker_instance",
           "analytics": "enstratus_job_event", "km": "credentials", "persist": "persist_objects"}


def found(conn: sa.Connection, chain: str) -> int | None:
    """The hand version of ``chain`` in this database; None if it has none of its tables."""
    tables = set(sa.inspect(conn).get_table_names())
    if chain == "persist" and PERSIST_META in tables:
        stored = conn.exec_driver_sql(
            f"SELECT value FROM {PERSIST_META} WHERE name = 'schema_version'").scalar()
    elif chain != "persist" and VERSIONS_TABLE in tables:
        stored = conn.execute(sa.text(f"SELECT version FROM {VERSIONS_TABLE} WHERE component = :c"),
                              {"c": chain}).scalar()
    else:
        stored = None
    if stored is not None:
        return int(stored)
    return 1 if _MARKER[chain] in tables else None


def version() -> int | None:
    """In a revision: the hand version :mod:`db.migrate` found before Alembic ran (None: new)."""
    return context.config.attributes.get("legacy_version")


def adopt(chain: str) -> None:
    """In revision 1: bring a hand-versioned database to :data:`LAST`, then drop its bookkeeping."""
    found_version = version()
    while found_version < LAST[chain]:
        log.warning("migrating the %s tables from hand-versioned schema %d to %d",
                    chain, found_version, found_version + 1)
        _STEPS[chain][found_version](op.get_bind())
        found_version += 1
    _forget(chain)


def _forget(chain: str) -> None:
    # Read through the real connection (in --sql mode Alembic's bind only prints).
    conn = context.config.attributes["connection"]
    tables = set(sa.inspect(conn).get_table_names())
    if chain == "persist":
        if PERSIST_META in tables:
            op.drop_table(PERSIST_META)
        return
    if VERSIONS_TABLE not in tables:
        return
    op.execute(f"DELETE FROM {VERSIONS_TABLE} WHERE component = '{chain}'")
    others = conn.execute(sa.text(f"SELECT COUNT(*) FROM {VERSIONS_TABLE} WHERE component <> :c"),
                          {"c": chain}).scalar()
    if not others:
        op.drop_table(VERSIONS_TABLE)


# -- the old releases' migrations, one step each ---------------------------------------------------

def _provisioning_1_to_2(conn: sa.Connection) -> None:
    """Jobs get an ``owner`` (one subscriber per attempt); identities compare byte for byte."""
    from ..schema import heartbeats, jobs

    if "owner" not in {c["name"] for c in sa.inspect(conn).get_columns("enstratus_job")}:
        owner = jobs.c.owner.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE enstratus_job ADD COLUMN owner {owner} NULL")
    make_exact(conn, jobs, ["action", "queue", "idempotency_key", "worker", "owner"])
    make_exact(conn, heartbeats, ["daemon", "name", "host"])


def _admin_1_to_2(conn: sa.Connection) -> None:
    """Version 1 declared the names plain VARCHARs: on MySQL/MariaDB they compared case-, accent-
    and trailing-space-insensitively. Making them exact cannot create duplicates (only more
    values become distinct); on SQLite they were exact already."""
    from ..instances import declared_queues, instance_queues, instances, state

    make_exact(conn, instances, ["type"])
    make_exact(conn, instance_queues, ["queue"])
    make_exact(conn, declared_queues, ["name"])
    make_exact(conn, state, ["name"])


def _analytics_1_to_2(conn: sa.Connection) -> None:
    """Version 2 added ``enstratus_server_event``, as it was then: the revisions after it (an
    index, analytics_0003) must find it as that release left it."""
    from ..schema import server_events

    v2 = server_events.to_metadata(sa.MetaData())
    v2.indexes = {i for i in v2.indexes if i.name == "ix_enstratus_server_event_server"}
    v2.create(conn, checkfirst=True)


def _km_1_to_2(conn: sa.Connection) -> None:
    """Exact identity columns; spelling digests filled in and made unique."""
    from ...km.schema import SPELLING_INDEX, credentials
    from ...km.spelling import digest

    make_exact(conn, credentials, ["account", "name", "kind"])
    have = {c["name"] for c in sa.inspect(conn).get_columns(credentials.name)}
    for column in ("account_key", "name_key"):
        if column not in have:
            ddl = credentials.c[column].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE credentials ADD COLUMN {column} {ddl} NOT NULL DEFAULT ''")
    rows = conn.execute(sa.select(credentials.c.account, credentials.c.name)
                        .order_by(credentials.c.created_ms, credentials.c.account, credentials.c.name)).all()
    taken: dict[tuple[str, str], tuple[str, str]] = {}
    for account, name in rows:
        key = (digest(account), digest(name))
        if key in taken:
            # Two spellings of one credential from before the rule (possible where the old
            # columns were binary, as on SQLite). Both stay readable under their exact spelling;
            # the later one gets a key of its own, so new spellings are still refused.
            log.warning("credential %r of account %r is another spelling of %r of %r; both kept",
                        name, account, taken[key][1], taken[key][0])
            key = (key[0], hashlib.sha256(f"legacy\0{account}\0{name}".encode("utf-8", "surrogatepass"))
                   .hexdigest())
        taken[key] = (account, name)
        conn.execute(credentials.update()
                     .where((credentials.c.account == account) & (credentials.c.name == name))
                     .values(account_key=key[0], name_key=key[1]))
    if SPELLING_INDEX not in {i["name"] for i in sa.inspect(conn).get_indexes(credentials.name)}:
        next(i for i in credentials.indexes if i.name == SPELLING_INDEX).create(conn)


# chain -> {from_version: step to from_version + 1}
_STEPS = {
    "provisioning": {1: _provisioning_1_to_2},
    "admin": {1: _admin_1_to_2},
    "analytics": {1: _analytics_1_to_2},
    "km": {1: _km_1_to_2},
    "persist": {},
}
