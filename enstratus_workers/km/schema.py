"""The KM's tables in the ``credentials`` database, their schema version and migrations.

The version lives in ``enstratus_schema_version`` under the component ``km`` (the table the
provisioning and analytics databases use too, so pointing ``credentials_url`` at a shared
database still works). A database without a version row but with a ``credentials`` table was
made by a release before versions: that is version 1.

- **1**: account, name and kind in the server's default collation (on MariaDB/MySQL case-,
  accent- and trailing-space-insensitive, so one account's lookups found another's row).
- **2**: account, name and kind are ``IdentityString`` (byte for byte); ``account_key`` and
  ``name_key`` hold the digests of their folded spellings (``spelling.py``), unique together,
  so two spellings of one credential cannot both be created.

``ensure_schema`` creates or migrates; it runs under a named lock on MySQL (several KMs may
start at once against one database) and each step is idempotent, because MySQL commits DDL as it
goes and a migration cut short must be able to run again.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa

from enstratus_workers.db.identity import IdentityString, make_exact
from enstratus_workers.errors import DatabaseError
from enstratus_workers.km.protocol import MAX_ACCOUNT, MAX_NAME, MAX_SECRET
from enstratus_workers.km.spelling import DIGEST_SIZE, digest

log = logging.getLogger(__name__)

COMPONENT = "km"
SCHEMA_VERSION = 2
SPELLING_INDEX = "ux_credentials_spelling"
_LOCK = "enstratus_km_schema"
_LOCK_WAIT = 60     # seconds another KM's migration may take before this start gives up

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
versions = sa.Table(
    "enstratus_schema_version", metadata_obj,
    sa.Column("component", sa.String(50), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def ensure_schema(engine: sa.Engine) -> int:
    """Create the KM's tables, or migrate an older database to ``SCHEMA_VERSION``; return it."""
    with engine.connect() as conn:
        _lock(conn)
        try:
            with conn.begin():
                existed = sa.inspect(conn).has_table(credentials.name)
                metadata_obj.create_all(conn, checkfirst=True)
                stored = conn.execute(sa.select(versions.c.version)
                                      .where(versions.c.component == COMPONENT)).scalar()
                if stored is None:
                    stored = 1 if existed else SCHEMA_VERSION
                    conn.execute(versions.insert().values(component=COMPONENT, version=stored))
                if stored > SCHEMA_VERSION:
                    raise DatabaseError(f"the credentials database has KM schema version {stored}, "
                                        f"newer than this release understands ({SCHEMA_VERSION})")
                while stored < SCHEMA_VERSION:
                    log.warning("migrating the credentials database from KM schema %d to %d",
                                stored, stored + 1)
                    MIGRATIONS[stored](conn)
                    stored += 1
                    conn.execute(versions.update().where(versions.c.component == COMPONENT)
                                 .values(version=stored))
        finally:
            _unlock(conn)
    return SCHEMA_VERSION


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "mysql":
        if conn.exec_driver_sql(f"SELECT GET_LOCK('{_LOCK}', {_LOCK_WAIT})").scalar() != 1:
            raise DatabaseError("another KM kept the credentials schema locked; try again")
        conn.commit()


def _unlock(conn: sa.Connection) -> None:
    # a named lock belongs to the session, which the pool keeps: release it explicitly
    if conn.dialect.name == "mysql":
        conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_LOCK}')")
        conn.commit()


def _v1_to_v2(conn: sa.Connection) -> None:
    """Exact identity columns; spelling digests filled in and made unique."""
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


MIGRATIONS = {1: _v1_to_v2}
