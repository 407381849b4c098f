"""Strict JSON refuses what other readers cannot read back; identity columns compare bytes."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from enstratus_workers import strictjson
from enstratus_workers.db.identity import IdentityString, make_exact


@pytest.mark.parametrize("text", ['{"a": NaN}', '[Infinity]', '-Infinity', '"\\ud800"',
                                  '{"\\udfff": 1}', "[" * 200 + "]" * 200, "{", b"\xff\xfe"])
def test_loads_refuses_what_is_not_strict_json(text):
    # Given text a lenient parser would accept (or not JSON at all), When it is parsed strictly,
    # Then it is refused with a ValueError saying why.
    with pytest.raises(strictjson.NotStrictJSON):
        strictjson.loads(text)


@pytest.mark.parametrize("value", [float("nan"), {"x": [float("inf")]}, "\ud800", {1: "a"}, object()])
def test_dumps_refuses_values_that_cannot_round_trip(value):
    with pytest.raises(strictjson.NotStrictJSON):
        strictjson.dumps(value)


def test_strict_json_round_trips_ordinary_documents():
    doc = {"name": "web-1", "size": 2.5, "tags": ["é", "☃"], "n": None, "ok": True}
    assert strictjson.loads(strictjson.dumps(doc)) == doc


def test_sqlite_identity_columns_are_exact():
    _assert_exact(sa.create_engine("sqlite://"))


@pytest.mark.mysql
def test_mysql_identity_columns_are_exact_and_migrate(mysql_server):
    # Given a MySQL table created with the server's default (case- and accent-insensitive) collation
    db = f"ewtest_ident_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306")
    with admin.begin() as c:
        c.exec_driver_sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    engine = sa.create_engine(f"mysql+pymysql://root@127.0.0.1:3306/{db}")
    try:
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE probe (k VARCHAR(50) NOT NULL PRIMARY KEY)")
            c.exec_driver_sql("INSERT INTO probe VALUES ('key')")
            assert c.exec_driver_sql("SELECT k FROM probe WHERE k = 'KÉY '").all() == [("key",)]
            # When it is migrated to an identity column
            table = sa.Table("probe", sa.MetaData(), sa.Column("k", IdentityString(50), primary_key=True))
            make_exact(c, table)
            # Then only the exact bytes find the row, and the other spellings are new keys
            assert c.exec_driver_sql("SELECT k FROM probe WHERE k = 'KÉY '").all() == []
        with engine.begin() as c:
            c.exec_driver_sql("DROP TABLE probe")
        _assert_exact(engine)
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {db}")
        admin.dispose()


def _assert_exact(engine):
    meta = sa.MetaData()
    t = sa.Table("ident_probe", meta, sa.Column("k", IdentityString(50), primary_key=True))
    meta.create_all(engine)
    try:
        spellings = ["key", "KEY", "key ", "kéy", "ke\u0301y"]
        with engine.begin() as c:
            for k in spellings:          # the primary key would refuse any two that compared equal
                c.execute(t.insert().values(k=k))
            for k in spellings:
                assert c.execute(sa.select(t.c.k).where(t.c.k == k)).scalars().all() == [k]
    finally:
        meta.drop_all(engine)
