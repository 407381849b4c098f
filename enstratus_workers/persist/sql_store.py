"""The one SQLAlchemy Core code path behind the sqlite and relational backends.

Two tables hold everything: ``persist_objects`` (one row per object, its JSON text and an integer
``version`` bumped by every write) and ``persist_indexes`` (one row per index entry, the string
or integer value in its own column so both sort natively). They are created and migrated by the
Alembic chain ``persist`` (``db/migrate.py``) on a store's first use. The ``persist_`` prefix
keeps them apart from the provisioning tables when both live in one database.

Names and string index values are stored as UTF-8 bytes (VARBINARY / BLOB): comparisons are
then exact and ordered by bytes in every engine, as in Riak, with no collation folding case or
trailing spaces. A conditional write is a compare-and-swap in one statement
(``UPDATE ... WHERE version = :expected``), so no lock is held between a read and a write.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import (BigInteger, Column, Index, Integer, LargeBinary, MetaData, Table, Text, and_,
                        delete, exc, insert, select, update)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeDecorator

from enstratus_workers.db import retry
from enstratus_workers.db.migrate import SchemaTooNew, upgrade
from enstratus_workers.errors import DatabaseError
from enstratus_workers.persist import values
from enstratus_workers.persist.base import (ABSENT, ANY, StaleWriteError, NotFound, Store,
                                            StoredObject, StoreError, StoreUnavailable)

log = logging.getLogger(__name__)

_MYSQL = ("mysql", "mariadb")


class Utf8Bytes(TypeDecorator):
    """A string column stored as its UTF-8 bytes, so every engine compares it byte by byte."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect):
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(self.length))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value, dialect):
        return None if value is None else value.encode("utf-8")

    def process_result_value(self, value, dialect):
        return None if value is None else bytes(value).decode("utf-8")


@dataclass(frozen=True)
class Tables:
    objects: Table
    indexes: Table


def define_tables(metadata: MetaData) -> Tables:
    """The two tables, on a fresh ``MetaData`` per store (no module-level registry)."""
    opts = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
    objects = Table(
        "persist_objects", metadata,
        Column("bucket", Utf8Bytes(values.MAX_BUCKET_BYTES), primary_key=True),
        Column("key", Utf8Bytes(values.MAX_KEY_BYTES), primary_key=True),
        Column("value", Text().with_variant(mysql.LONGTEXT(), *_MYSQL), nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("schema", Integer, nullable=False),
        Column("updated_ms", BigInteger, nullable=False),
        **opts)
    indexes = Table(
        "persist_indexes", metadata,
        Column("bucket", Utf8Bytes(values.MAX_BUCKET_BYTES), primary_key=True),
        Column("key", Utf8Bytes(values.MAX_KEY_BYTES), primary_key=True),
        Column("name", Utf8Bytes(values.MAX_INDEX_NAME_BYTES), primary_key=True),
        Column("value_bin", Utf8Bytes(values.MAX_BIN_VALUE_BYTES), nullable=True),
        Column("value_int", BigInteger, nullable=True),
        Index("ix_persist_indexes_bin", "bucket", "name", "value_bin", "key"),
        Index("ix_persist_indexes_int", "bucket", "name", "value_int", "key"),
        **opts)
    return Tables(objects, indexes)


class _Retry(Exception):
    """A racing writer created the row between our UPDATE and INSERT: run the work again."""


class SqlStore(Store):
    """Objects in SQL tables through SQLAlchemy Core; subclasses supply the engine and dialect quirks.

    ``write_options`` are execution options of write transactions (SQLite uses one to begin them
    IMMEDIATE). A transaction that fails with an error that left nothing behind (a deadlock, a
    lock wait timeout, a Galera certification failure, a lost writer node: ``db/retry.py``) is
    rolled back and run again, a few times; a read also when the connection was lost at COMMIT.
    """

    attempts = 5

    def __init__(self, engine: Engine, *, write_options: dict | None = None):
        self._engine = engine
        self._write_options = dict(write_options or {})
        self._t = define_tables(MetaData())
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- transactions ---------------------------------------------------------------------------

    def _run(self, work: Callable[[Connection], Any], *, write: bool) -> Any:
        self._ensure_schema()
        try:
            return retry.run(lambda: self._transaction(work, write), idempotent=not write,
                             attempts=self.attempts, what=f"{self.name} store")
        except exc.DBAPIError as e:
            raise self._translate(e) from e

    def _transaction(self, work: Callable[[Connection], Any], write: bool) -> Any:
        """``work`` in one transaction, run again when a racing writer created its row first."""
        for _ in range(self.attempts):
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(**self._write_options)
                    with conn.begin():
                        return work(conn)
            except _Retry:
                continue
        raise StoreError(f"{self.name}: gave up after {self.attempts} attempts (write contention)")

    def _translate(self, e: exc.DBAPIError) -> StoreError:
        if isinstance(e, (exc.OperationalError, exc.InterfaceError)) or e.connection_invalidated:
            return StoreUnavailable(f"{self.name} database unavailable: {e.orig}")
        return StoreError(f"{self.name} database error: {e.orig}")

    def _ensure_schema(self) -> None:
        """Bring the tables to head on first use (``db/migrate.py``: one process migrates)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                upgrade(self._engine, "persist")
            except SchemaTooNew as e:
                raise StoreError(f"{self.name}: {e}") from None
            except DatabaseError as e:
                raise StoreUnavailable(f"{self.name}: {e}") from None
            except exc.DBAPIError as e:
                raise self._translate(e) from e
            self._ready = True

    # -- the contract ---------------------------------------------------------------------------

    def _where(self, table: Table, bucket: str, key: str):
        return and_(table.c.bucket == bucket, table.c["key"] == key)

    def _check_version(self, expected) -> None:
        if expected is not ANY and expected is not ABSENT and (
                not isinstance(expected, int) or isinstance(expected, bool)):
            raise TypeError(f"{self.name}: a version is an int from this store, not {expected!r}")

    def _put(self, bucket, key, data, text, schema, indexes, expected) -> StoredObject:
        o = self._t.objects
        self._check_version(expected)

        def work(conn: Connection) -> int:
            row = dict(value=text, schema=schema, updated_ms=time.time_ns() // 1_000_000)
            if expected is ABSENT:
                version = self._insert(conn, bucket, key, row, on_conflict=StaleWriteError(
                    bucket, key, "create-only write, but the object exists"))
            elif expected is ANY:
                done = conn.execute(update(o).where(self._where(o, bucket, key))
                                    .values(version=o.c.version + 1, **row))
                if done.rowcount == 1:
                    version = conn.execute(select(o.c.version)
                                           .where(self._where(o, bucket, key))).scalar_one()
                else:
                    version = self._insert(conn, bucket, key, row, on_conflict=_Retry())
            else:
                done = conn.execute(update(o).where(self._where(o, bucket, key),
                                                    o.c.version == expected)
                                    .values(version=expected + 1, **row))
                if done.rowcount != 1:
                    raise StaleWriteError(bucket, key, f"version {expected} is no longer current")
                version = expected + 1
            self._replace_indexes(conn, bucket, key, indexes)
            return version

        version = self._run(work, write=True)
        return StoredObject(bucket, key, data, dict(indexes), version, schema)

    def _insert(self, conn: Connection, bucket, key, row, on_conflict: Exception) -> int:
        try:
            # No savepoint: on a duplicate key the whole transaction is abandoned (and for an
            # unconditional write, run again, now finding the row to UPDATE).
            conn.execute(insert(self._t.objects).values(bucket=bucket, key=key, version=1, **row))
        except exc.IntegrityError:
            raise on_conflict from None
        return 1

    def _replace_indexes(self, conn: Connection, bucket, key, indexes) -> None:
        ix = self._t.indexes
        conn.execute(delete(ix).where(self._where(ix, bucket, key)))
        if indexes:
            conn.execute(insert(ix), [
                dict(bucket=bucket, key=key, name=name,
                     value_bin=value if isinstance(value, str) else None,
                     value_int=value if isinstance(value, int) else None)
                for name, value in indexes.items()])

    def _get(self, bucket, key) -> StoredObject:
        o, ix = self._t.objects, self._t.indexes
        # One statement, so object and index entries come from the same committed write.
        stmt = (select(o.c.value, o.c.version, ix.c.name, ix.c.value_bin, ix.c.value_int)
                .select_from(o.outerjoin(ix, and_(ix.c.bucket == o.c.bucket,
                                                  ix.c["key"] == o.c["key"])))
                .where(self._where(o, bucket, key)))
        rows = self._run(lambda conn: conn.execute(stmt).all(), write=False)
        if not rows:
            raise NotFound(bucket, key)
        try:
            data, schema = values.decode(rows[0].value)
        except ValueError as e:
            raise StoreError(f"{bucket!r}/{key!r} in {self.name} does not hold JSON: {e}") from None
        indexes = {r.name: (r.value_bin if r.value_bin is not None else r.value_int)
                   for r in rows if r.name is not None}
        return StoredObject(bucket, key, data, indexes, rows[0].version, schema)

    def _delete(self, bucket, key, expected) -> None:
        o, ix = self._t.objects, self._t.indexes
        self._check_version(expected)

        def work(conn: Connection) -> None:
            cond = self._where(o, bucket, key)
            if expected is not ANY:
                cond = and_(cond, o.c.version == expected)
            if conn.execute(delete(o).where(cond)).rowcount == 0:
                if expected is not ANY:
                    raise StaleWriteError(bucket, key, f"version {expected} is no longer current")
                return
            conn.execute(delete(ix).where(self._where(ix, bucket, key)))

        self._run(work, write=True)

    def _list_keys(self, bucket) -> list[str]:
        o = self._t.objects
        stmt = select(o.c["key"]).where(o.c.bucket == bucket)
        return self._run(lambda conn: list(conn.execute(stmt).scalars()), write=False)

    def _query(self, bucket, index, lo, hi) -> list[str]:
        ix = self._t.indexes
        column = ix.c.value_int if values.index_kind(index) == "int" else ix.c.value_bin
        cond = column == lo if lo == hi else column.between(lo, hi)
        stmt = select(ix.c["key"]).where(ix.c.bucket == bucket, ix.c.name == index, cond)
        return self._run(lambda conn: list(conn.execute(stmt).scalars()), write=False)

    def ping(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
        except exc.DBAPIError as e:
            raise self._translate(e) from e

    def close(self) -> None:
        self._engine.dispose()
