"""A MySQL engine gives a connection back to its pool with a ROLLBACK only when a transaction may
be open on it (db/engine.py, ``_rollback_only_when_open``): a committed write costs no extra
round trip, and nothing a connection held (a row lock, a transaction) outlives its user.

The idle path's statements run on the driver's cursor (``db/driver.py``; the packed reads of
``db/packed.py`` among them), and keep what SQLAlchemy's execution would have done: they run in
the connection's transaction, the pool still rolls back a connection they ran on, they count rows
and take parameters as ``exec_driver_sql`` does, and a failure is SQLAlchemy's error, judged as
every statement's is (a lost connection invalidated), never run twice."""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa

from enstratus_workers.db import engine as engine_mod
from enstratus_workers.db import driver, packed
from enstratus_workers.layout import Layout

pytestmark = pytest.mark.mysql


@pytest.fixture
def engine(mysql_url, tmp_path):
    engine = engine_mod.make_engine(mysql_url, Layout(tmp_path))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 0)")
    yield engine
    engine.dispose()


@pytest.fixture
def sent(monkeypatch):
    """The commands every PyMySQL connection of this test sends, in order (queries as text)."""
    log: list[str] = []
    real = pymysql.connections.Connection._execute_command

    def spy(self, command, sql):
        log.append(sql.decode() if isinstance(sql, bytes) else str(sql))
        return real(self, command, sql)
    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", spy)
    return log


def _clean(engine) -> tuple[int, int]:
    """(the pooled connection's id, whether the server sees a transaction open on it), read
    first thing on the next checkout: what the previous user left behind."""
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql("SELECT CONNECTION_ID(), @@in_transaction").one())


def test_a_committed_transaction_is_given_back_without_a_rollback(engine, sent):
    first = _clean(engine)[0]
    sent.clear()
    # When a write commits
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE t SET v = v + 1 WHERE id = 1")
    # Then its connection goes back to the pool with no ROLLBACK after the COMMIT
    assert sent[-2:] == ["UPDATE t SET v = v + 1 WHERE id = 1", "COMMIT"]
    # and the next user of that same connection finds no transaction open
    assert _clean(engine) == (first, 0)


def test_a_read_left_open_is_rolled_back_and_its_row_lock_released(engine, sent):
    # When a connection locks a row and is given back without a commit
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT v FROM t WHERE id = 1 FOR UPDATE").all()
        sent.clear()
    # Then it was rolled back on its way back to the pool
    assert sent == ["ROLLBACK"]
    # and another session can lock the row at once
    other = pymysql.connect(host="127.0.0.1", user="root", autocommit=False,
                            database=engine.url.database)
    try:
        other.cursor().execute("SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT")
    finally:
        other.rollback()
        other.close()
    assert _clean(engine)[1] == 0


def test_a_failed_statement_or_an_explicit_rollback_leaves_nothing_open(engine, sent):
    # When a statement fails inside a transaction (the transaction is rolled back by SQLAlchemy)
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE t SET v = 5 WHERE id = 1")
            conn.exec_driver_sql("INSERT INTO t VALUES (1, 0)")
    # Then the update is gone and nothing is open
    assert _clean(engine)[1] == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM t WHERE id = 1").scalar() == 0
    # When a user rolls back itself, Then no second ROLLBACK follows on the way back
    with engine.connect() as conn:
        conn.exec_driver_sql("UPDATE t SET v = 7 WHERE id = 1")
        conn.rollback()
        sent.clear()
    assert sent == [] and _clean(engine)[1] == 0


def test_a_connection_lost_inside_a_transaction_raises_the_loss_not_a_pending_rollback(engine):
    # Given a transaction whose connection the server drops (a node killed, a KILL)
    killer = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            with engine.begin() as conn:
                conn.exec_driver_sql("UPDATE t SET v = 9 WHERE id = 1")
                killer.cursor().execute(f"KILL {int(conn.exec_driver_sql('SELECT CONNECTION_ID()').scalar())}")
                conn.exec_driver_sql("UPDATE t SET v = 10 WHERE id = 1")
    finally:
        killer.close()
    # Then the caller sees the lost connection (which db/retry.py knows to retry), not an error
    # raised by the bookkeeping while the transaction was rolled back
    assert caught.value.connection_invalidated
    # and the engine goes on with a fresh connection, nothing of the lost transaction applied
    assert _clean(engine)[1] == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM t WHERE id = 1").scalar() == 0


def _session(conn) -> int:
    return conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()


def test_a_packed_read_gives_the_values_and_runs_in_the_transaction_it_is_in(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE t SET v = 41 WHERE id = 1")
        # the read sees its own transaction's uncommitted write: it ran in that transaction
        assert packed.select(conn, "id, v, 'it''s \"one\"', NULL", "FROM t") == [[1, 41, "it's \"one\"", None]]
        conn.rollback()
    with engine.connect() as conn:
        assert packed.select(conn, "v", "FROM t WHERE id = 1") == [[0]]


def test_a_locking_packed_read_is_rolled_back_when_its_connection_is_given_back(engine, sent):
    # When a packed read locks a row and its connection goes back to the pool uncommitted
    with engine.connect() as conn:
        assert packed.select(conn, "v", "FROM t WHERE id = 1 FOR UPDATE") == [[0]]
        sent.clear()
    # Then the pool rolled it back, as it does after any statement SQLAlchemy ran
    assert sent == ["ROLLBACK"]
    other = pymysql.connect(host="127.0.0.1", user="root", autocommit=False, database=engine.url.database)
    try:   # and the row is free at once
        other.cursor().execute("SELECT v FROM t WHERE id = 1 FOR UPDATE NOWAIT")
    finally:
        other.rollback()
        other.close()


def test_a_packed_read_on_a_lost_connection_raises_the_loss_and_the_engine_goes_on(engine):
    killer = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught:
            with engine.connect() as conn:
                killer.cursor().execute(f"KILL {int(_session(conn))}")
                packed.select(conn, "v", "FROM t WHERE id = 1")
    finally:
        killer.close()
    # Then it is SQLAlchemy's error for a lost connection (what HeldConnection replaces and
    # db/retry.py retries), not the driver's
    assert caught.value.connection_invalidated
    with engine.connect() as conn:
        assert packed.select(conn, "v", "FROM t WHERE id = 1") == [[0]]


def test_a_bad_packed_read_raises_sqlalchemys_error_once_and_leaves_the_connection_usable(engine, sent):
    with engine.connect() as conn:
        sent.clear()
        with pytest.raises(sa.exc.DBAPIError) as caught:
            packed.select(conn, "no_such_column", "FROM t")
        assert caught.value.orig.args[0] == 1054 and not caught.value.connection_invalidated
        # sent once: a failure that is not the connection's is never run again (a deadlock
        # rolled its transaction back, and a read run again would go on in a new one)
        assert [c for c in sent if "no_such_column" in c] == ["SELECT JSON_ARRAY(no_such_column) FROM t"]
        conn.rollback()
        assert packed.select(conn, "id", "FROM t WHERE id = 1") == [[1]]


def test_a_write_on_the_cursor_counts_and_parametrizes_as_sqlalchemy_does(engine):
    with engine.begin() as conn:
        # matched rows, as SQLAlchemy's MySQL connections count them (FOUND_ROWS), unchanged too
        assert driver.execute(conn, "UPDATE t SET v = 0 WHERE id = %s", (1,)).rowcount == 1
        assert conn.exec_driver_sql("UPDATE t SET v = 0 WHERE id = %s", (1,)).rowcount == 1
        # the id an INSERT made, and "%%" and quotes as exec_driver_sql takes them
        conn.exec_driver_sql("CREATE TABLE u (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(40))")
        made = driver.execute(conn, "INSERT INTO u (s) VALUES (%s)", ("it's 100%",))
        assert made.rowcount == 1 and made.lastrowid == 1
        assert driver.execute(conn, "UPDATE u SET s = CONCAT(s, '%%') WHERE id = 1").rowcount == 1
        assert driver.rows(conn, "SELECT s FROM u") == conn.exec_driver_sql("SELECT s FROM u").fetchall() \
            == [("it's 100%%",)]
        conn.rollback()
    # in the transaction it was in: rolled back with it
    with engine.connect() as conn:
        assert driver.rows(conn, "SELECT v FROM t WHERE id = 1") == [(0,)]


def test_a_write_on_the_cursor_is_committed_by_the_connections_commit(engine):
    # When a write is the first statement on a connection that began no transaction itself
    with engine.connect() as conn:
        driver.execute(conn, "UPDATE t SET v = 6 WHERE id = 1")
        conn.commit()
    # Then the commit committed it (the transaction began as SQLAlchemy's would have)
    with engine.connect() as conn:
        assert driver.rows(conn, "SELECT v FROM t WHERE id = 1") == [(6,)]


def test_a_refused_write_is_sqlalchemys_error_sent_once_and_a_lost_one_is_invalidated(engine, sent):
    with engine.connect() as conn:
        sent.clear()
        with pytest.raises(sa.exc.IntegrityError) as caught:
            driver.execute(conn, "INSERT INTO t VALUES (%s, %s)", (1, 5))
        assert caught.value.orig.args[0] == 1062 and not caught.value.connection_invalidated
        assert [c for c in sent if c.startswith("INSERT")] == ["INSERT INTO t VALUES (1, 5)"]
        conn.rollback()
    killer = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught:
            with engine.begin() as conn:
                killer.cursor().execute(f"KILL {int(_session(conn))}")
                driver.execute(conn, "UPDATE t SET v = 3 WHERE id = 1")
    finally:
        killer.close()
    assert caught.value.connection_invalidated
    with engine.connect() as conn:
        assert driver.rows(conn, "SELECT v FROM t WHERE id = 1") == [(0,)]
