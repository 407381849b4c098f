"""The SQL backends beyond the shared contract: their tables, schema version and processes."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap

import pymysql
import pytest
from sqlalchemy.engine import make_url

from enstratus_workers.db import migrate
from enstratus_workers.errors import ConfigError
from enstratus_workers.persist import StoreError, StoreUnavailable
from enstratus_workers.persist.relational import RelationalStore
from enstratus_workers.persist.sqlite import SqliteStore

PERSIST_HEAD = migrate.script("persist").get_current_head()


def _sqlite(path, sql, *params):
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_tables_are_created_on_first_use_at_the_persist_chains_head(tmp_path):
    path = tmp_path / "sub" / "p.db"
    with SqliteStore(path) as store:
        assert not path.exists() or _sqlite(path, "select name from sqlite_master") == []
        store.put("servers", "i-1", {})
    assert _sqlite(path, "select version_num from enstratus_migration_persist") == [(PERSIST_HEAD,)]
    assert _sqlite(path, "pragma journal_mode") == [("wal",)]


def test_tables_of_a_newer_schema_are_refused(tmp_path):
    path = tmp_path / "p.db"
    with SqliteStore(path) as store:
        store.put("servers", "i-1", {})
    _sqlite(path, "update enstratus_migration_persist set version_num = 'persist_0099'")
    with SqliteStore(path) as store:
        with pytest.raises(StoreError, match="persist_0099.*newer enstratus-workers"):
            store.get("servers", "i-1")


def test_a_value_without_the_envelope_reads_as_schema_0(tmp_path):
    path = tmp_path / "p.db"
    with SqliteStore(path) as store:
        store.put("servers", "i-1", {})
    _sqlite(path, "update persist_objects set value = ?", '{"name": "legacy"}')
    with SqliteStore(path) as store:
        read = store.get("servers", "i-1")
    assert (read.data, read.schema) == ({"name": "legacy"}, 0)


_INCREMENTER = textwrap.dedent("""
    import sys
    from enstratus_workers.persist import StaleWriteError
    from enstratus_workers.persist.sqlite import SqliteStore
    with SqliteStore(sys.argv[1]) as store:
        for _ in range(50):
            while True:
                read = store.get("counters", "c")
                try:
                    store.put("counters", "c", {"n": read.data["n"] + 1}, expected=read.version)
                    break
                except StaleWriteError:
                    pass
""")


def test_two_processes_on_one_sqlite_file_lose_no_increment(tmp_path):
    # Given a counter in a SQLite file
    path = tmp_path / "p.db"
    with SqliteStore(path) as store:
        store.put("counters", "c", {"n": 0})

    # When two processes each increment it 50 times with compare-and-swap loops
    procs = [subprocess.Popen([sys.executable, "-c", _INCREMENTER, str(path)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=60)[1] for p in procs]

    # Then both succeed and every increment is there
    assert [p.returncode for p in procs] == [0, 0], errors
    with SqliteStore(path) as store:
        assert store.get("counters", "c").data == {"n": 100}


def test_relational_tables_compare_names_as_bytes_and_hold_utf8mb4(mysql_url):
    with RelationalStore(mysql_url) as store:
        store.put("servers", "i-1", {"name": "🚀"}, {"owner_bin": "ops"})
    url = make_url(mysql_url)
    conn = pymysql.connect(host=url.host, port=url.port, user=url.username,
                           password=url.password or "", database=url.database)
    try:
        with conn.cursor() as cur:
            cur.execute("select version_num from enstratus_migration_persist")
            assert cur.fetchall() == ((PERSIST_HEAD,),)
            cur.execute("select column_name, data_type from information_schema.columns "
                        "where table_schema = database() and table_name = 'persist_objects'")
            types = dict(cur.fetchall())
            assert types["bucket"] == "varbinary" and types["key"] == "varbinary"
            assert types["value"] == "longtext"
    finally:
        conn.close()


def test_relational_refuses_a_url_it_cannot_speak():
    with pytest.raises(ConfigError, match="MySQL"):
        RelationalStore("sqlite:///x.db")
    with pytest.raises(ConfigError):
        RelationalStore("not a url")


def test_relational_server_down_is_store_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RelationalStore(f"mysql+pymysql://root@127.0.0.1:{port}/x", connect_timeout=2) as store:
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.get("servers", "i-1")
