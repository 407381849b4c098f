"""Identity columns: names and keys that must compare byte for byte on every database.

MySQL's and MariaDB's default collations compare case-, accent- and trailing-space-insensitively,
so ``'KEY'``, ``'kéy'`` and ``'key '`` all find the row of ``'key'``: an idempotency key would
return another caller's job, a KM lookup another account's secret. Every column used as a key
(KM account/name/kind, idempotency keys, queue and worker-type names, heartbeat identities) is
declared as an :class:`IdentityString`, which MySQL gets with a binary *no-pad* collation:

- MariaDB: ``utf8mb4_nopad_bin`` (its ``utf8mb4_bin`` is PAD SPACE, so ``'key '`` still equals ``'key'``);
- MySQL 8: ``utf8mb4_0900_bin`` (NO PAD);
- older MySQL: ``utf8mb4_bin``, the closest it has (trailing spaces then still compare equal).

SQLite's default BINARY collation and PostgreSQL's deterministic collations already compare
bytes, so elsewhere it is a plain ``VARCHAR``. :func:`make_exact` migrates an existing MySQL table.
"""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles


class IdentityString(sa.String):
    """A ``VARCHAR(length)`` that compares byte for byte (see the module docstring)."""

    __visit_name__ = "identity_string"
    cache_ok = True


def exact_collation(dialect) -> str:
    """The binary no-pad utf8mb4 collation of this MySQL-family server."""
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    version = getattr(dialect, "server_version_info", None) or ()
    return "utf8mb4_0900_bin" if tuple(version[:1]) >= (8,) else "utf8mb4_bin"


@compiles(IdentityString)
def _plain(element, compiler, **kw):
    return f"VARCHAR({element.length})"


@compiles(IdentityString, "mysql")
def _mysql(element, compiler, **kw):
    return f"VARCHAR({element.length}) CHARACTER SET utf8mb4 COLLATE {exact_collation(compiler.dialect)}"


def make_exact(conn: sa.Connection, table: sa.Table, columns: Iterable[str] | None = None) -> None:
    """Give an existing MySQL table's identity columns their exact collation (a no-op elsewhere).

    Used by schema migrations for databases created before the columns were exact. Changing to
    a binary collation never creates duplicates (it only makes more values distinct).
    """
    if conn.dialect.name != "mysql":
        return
    names = list(columns) if columns is not None else [
        c.name for c in table.columns if isinstance(c.type, IdentityString)]
    if not names:
        return
    clauses = []
    for name in names:
        col = table.c[name]
        null = "NULL" if col.nullable else "NOT NULL"
        clauses.append(f"MODIFY `{name}` {col.type.compile(dialect=conn.dialect)} {null}")
    conn.exec_driver_sql(f"ALTER TABLE `{table.name}` " + ", ".join(clauses))
