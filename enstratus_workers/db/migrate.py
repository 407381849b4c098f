"""The one path by which every database the service owns gets its tables: Alembic chains.

Each database has its own chain of revisions in ``db/migrations/versions/<chain>/`` and its own
version table (``enstratus_migration_<chain>``), so chains sharing one server, or one schema,
never see each other's versions:

=============  ================================  ===========================================
chain          database                          tables
=============  ================================  ===========================================
provisioning   ``provisioning.url``              jobs, heartbeats
admin          ``provisioning.url``              the desired state (``db/instances.py``)
analytics      ``analytics.url``                 job and server events
km             ``credentials_url`` (km.cfg)      the KM's credentials
persist        the sqlite / relational stores    ``persist_objects``, ``persist_indexes``
=============  ================================  ===========================================

Revision 1 of every chain is the schema as the hand-versioned releases left it (their
``enstratus_schema_version`` row, or ``persist_meta``). A database those releases made is
recognised before Alembic runs (``migrations/legacy.py``): at that version it is stamped, at
the version before it brought up by revision 1 with the old migration code; either way the old
bookkeeping is then removed.

Daemons call :func:`upgrade` at start. It migrates under one lock per server (MariaDB/MySQL
``GET_LOCK('enstratus_schema')``; SQLite an ``fcntl`` lock on ``<file>.schema-lock``), so
daemons starting together on any number of hosts migrate once; the others wait, find the
database at head and go on. A database at a revision this release does not know was upgraded
by a newer release: :class:`SchemaTooNew`, and the daemon does not start.
"""

from __future__ import annotations

import fcntl
import functools
import io
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa

from ..errors import DatabaseError

# Alembic (and Mako under it) is imported where it is used: a third of a second, which the CLI's
# commands that never touch a schema should not pay.

log = logging.getLogger(__name__)

CHAINS = ("provisioning", "admin", "analytics", "km", "persist")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_NAME = "enstratus_schema"
#: seconds a start waits for another process's migration (an ALTER of a large job table on
#: MySQL copies it) before it gives up with an error saying so
LOCK_WAIT = 600


#: A revision file's name: ``<chain>_<NNNN>_<what>.py``, its revision id ``<chain>_<NNNN>``
_REVISION_FILE = re.compile(r"(?P<revision>(?P<chain>[a-z]+)_\d{4})_\w+\.py")


@functools.cache
def head_by_name(chain: str) -> str | None:
    """The chain's newest revision as its file names tell it, read without Alembic; None when
    any file of the chain's directory breaks the naming (then only Alembic can tell).

    ``upgrade`` finds a database at this head with one read of its version table and returns
    without Alembic, whose import and revision files cost every daemon's start and every CLI
    command more than the rest of opening the databases (bench/README.md). A chain is a line of
    revisions numbered in its file names; ``tests/unit/test_migrations.py`` holds the names to
    Alembic's own revisions and heads."""
    names = [p.name for p in (MIGRATIONS_DIR / "versions" / chain).glob("*.py") if p.name != "__init__.py"]
    found = [m for m in map(_REVISION_FILE.fullmatch, names) if m is not None and m["chain"] == chain]
    return max(m["revision"] for m in found) if found and len(found) == len(names) else None


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer release than this one."""


@dataclass(frozen=True)
class State:
    """Where one chain's database stands: its Alembic revision, or the hand version before it."""

    chain: str
    current: str | None        # the revision in the version table; None if not stamped yet
    head: str
    legacy: int | None         # the hand-versioned release's version, when not stamped yet

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.current is not None:
            return f"{self.chain}: {self.current}" + (" (head)" if self.at_head else f" (head is {self.head})")
        if self.legacy is not None:
            return f"{self.chain}: hand-versioned schema {self.legacy}, not yet under migrations (head is {self.head})"
        return f"{self.chain}: empty (head is {self.head})"


def version_table(chain: str) -> str:
    return f"enstratus_migration_{chain}"


def alembic_config(chain: str, *, connection: sa.Connection | None = None,
                   out: TextIO | None = None, legacy_version: int | None = None):
    """The Alembic ``Config`` of ``chain``, built here: no alembic.ini is read or needed."""
    from alembic.config import Config

    if chain not in CHAINS:
        raise ValueError(f"unknown schema chain {chain!r} (one of {', '.join(CHAINS)})")
    cfg = Config(output_buffer=out, stdout=out or io.StringIO())
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions" / chain))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(chain=chain, connection=connection, version_table=version_table(chain),
                          legacy_version=legacy_version)
    return cfg


def script(chain: str):
    """The chain's Alembic ``ScriptDirectory`` (its revisions)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(chain))


def read_state(conn: sa.Connection, chain: str) -> State:
    """Read-only: the chain's revision (or hand version) in the database behind ``conn``.

    Raises :class:`SchemaTooNew` for a revision, or a hand version, this release does not know.
    """
    from alembic.runtime.migration import MigrationContext

    from .migrations import legacy

    scripts = script(chain)
    head = scripts.get_current_head()
    heads = MigrationContext.configure(conn, opts={"version_table": version_table(chain)}).get_current_heads()
    known = {r.revision for r in scripts.walk_revisions()}
    unknown = [h for h in heads if h not in known]
    if unknown:
        raise SchemaTooNew(
            f"the {chain} schema of {_where(conn)} is at revision {unknown[0]}, which this release "
            f"does not know (its newest is {head}): a newer enstratus-workers migrated it; "
            f"upgrade enstratus-workers on this host")
    if len(heads) > 1:
        raise DatabaseError(f"the {chain} schema of {_where(conn)} has several heads {heads}")
    current = heads[0] if heads else None
    found = None if current else legacy.found(conn, chain)
    if found is not None and found > legacy.LAST[chain]:
        raise SchemaTooNew(
            f"the {chain} schema of {_where(conn)} has hand version {found}, newer than this "
            f"release understands ({legacy.LAST[chain]}); upgrade enstratus-workers")
    return State(chain, current, head, found)


def current(engine: sa.Engine, chain: str) -> State:
    with engine.connect() as conn:
        return read_state(conn, chain)


def upgrade(engine: sa.Engine, chain: str, *, lock_wait: float = LOCK_WAIT) -> State:
    """Bring ``chain``'s database to head (a no-op at head); return where it then stands.

    Cheap when nothing is to be done (one SELECT, no lock, no Alembic: ``head_by_name``), so
    every daemon, and every CLI command, calls it at start.
    """
    with engine.connect() as conn:
        head = head_by_name(chain)
        if head is not None and _stamped_at(conn, chain, head):
            return State(chain, head, head, None)
        before = read_state(conn, chain)
        conn.rollback()
        if before.at_head:
            return before
        with schema_lock(conn, lock_wait):
            state = read_state(conn, chain)   # another process may have migrated while we waited
            conn.rollback()
            if state.at_head:
                return state
            log.warning("migrating %s: %s", _where(conn), state.describe())
            from alembic import command

            command.upgrade(alembic_config(chain, connection=conn, legacy_version=state.legacy), "head")
            conn.commit()
            after = read_state(conn, chain)
            conn.rollback()
    log.warning("migrated %s: %s", _where(engine), after.describe())
    return after


def _stamped_at(conn: sa.Connection, chain: str, head: str) -> bool:
    """Whether the chain's version table holds exactly ``head``, read without Alembic. Anything
    else (no table yet, another revision, several rows, an error) says no: ``read_state`` then
    judges, with Alembic, as before (a newer schema, a hand-versioned one, a migration)."""
    try:
        rows = conn.exec_driver_sql(f"SELECT version_num FROM {version_table(chain)}").all()
    except sa.exc.DBAPIError:
        rows = None
    conn.rollback()
    return rows is not None and len(rows) == 1 and rows[0][0] == head


def upgrade_sql(engine: sa.Engine, chain: str, out: TextIO) -> State:
    """Write to ``out`` the SQL that :func:`upgrade` would run now; the database is only read."""
    from alembic import command

    from .migrations import legacy

    with engine.connect() as conn:
        state = read_state(conn, chain)
        conn.rollback()
        out.write(f"-- {state.describe()}\n")
        if state.at_head:
            return state
        if state.legacy is not None and state.legacy < legacy.LAST[chain]:
            raise DatabaseError(
                f"the {chain} schema of {_where(conn)} is hand-versioned schema {state.legacy}: its "
                f"migration reads and rewrites rows, so it runs online only "
                f"('enstratus-workers db upgrade' without --sql)")
        target = f"{state.current}:head" if state.current else "head"
        # The live connection gives Alembic the server's real dialect (MariaDB or MySQL, and its
        # version: the exact collations depend on it); in --sql mode Alembic never executes on it.
        command.upgrade(alembic_config(chain, connection=conn, out=out, legacy_version=state.legacy),
                        target, sql=True)
        conn.rollback()
    return state


def history(chain: str) -> list[tuple[str, str | None, str]]:
    """``(revision, down_revision, message)`` of the chain, oldest first."""
    revs = list(script(chain).walk_revisions())
    return [(r.revision, r.down_revision, (r.doc or "").strip()) for r in reversed(revs)]


@contextmanager
def schema_lock(conn: sa.Connection, wait: float) -> Iterator[None]:
    """Hold the migration lock of the database behind ``conn`` for the block."""
    if conn.dialect.name == "mysql":
        got = conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, int(wait))).scalar()
        conn.commit()
        if got != 1:
            raise DatabaseError(f"another process has held the schema lock of {_where(conn)} for "
                                f"{int(wait)} s (a migration still running?); try again")
        try:
            yield
        finally:
            # a named lock belongs to the session, which the pool keeps: release it explicitly
            conn.rollback()
            conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
            conn.commit()
        return
    path = _sqlite_file(conn)
    if path is None:   # an in-memory database: one process only
        yield
        return
    with open(f"{path}.schema-lock", "a+b") as f:
        os.chmod(f.name, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseError(f"another process has held {f.name} for {int(wait)} s "
                                        f"(a migration still running?); try again") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sqlite_file(conn: sa.Connection) -> str | None:
    database = conn.engine.url.database
    if conn.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _where(bind) -> str:
    url = bind.engine.url if isinstance(bind, sa.Connection) else bind.url
    return url.render_as_string(hide_password=True)
