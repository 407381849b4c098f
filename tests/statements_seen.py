"""The SQL a database engine runs, for tests that count statements.

On MySQL the idle path's statements run on the driver's cursor, not through SQLAlchemy's
execution (``db/driver.py``), so SQLAlchemy's ``before_cursor_execute`` does not see them: there
they are read where every statement goes, the driver cursor's ``execute``.
"""

from __future__ import annotations

import pymysql
from sqlalchemy import event


def statements_of(engine, monkeypatch) -> list[str]:
    """The SQL ``engine`` runs from now on (a list that grows); on MySQL, what every PyMySQL
    cursor of this process runs (a test's engines are its own)."""
    seen: list[str] = []
    if engine.dialect.name != "mysql":
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_a: seen.append(statement))
        return seen
    real = pymysql.cursors.Cursor.execute

    def spy(self, query, args=None):
        seen.append(query)
        return real(self, query, args)
    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", spy)
    return seen
