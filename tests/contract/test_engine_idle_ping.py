"""MySQL engines ping a pooled connection only after it sat idle (db/engine.py): one that the
server dropped is replaced unseen, and a busy pool pays no ping per transaction."""

from __future__ import annotations

import pymysql
import pytest

from enstratus_workers.db import engine as engine_mod
from enstratus_workers.layout import Layout

pytestmark = pytest.mark.mysql


def _kill(connection_id: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        conn.cursor().execute(f"KILL {int(connection_id)}")
    finally:
        conn.close()


def test_a_connection_the_server_dropped_while_idle_is_replaced(mysql_url, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_mod, "IDLE_PING_S", 0.0)   # every checkout counts as after idling
    engine = engine_mod.make_engine(mysql_url, Layout(tmp_path))
    try:
        with engine.connect() as conn:
            first = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        # When the server drops the pooled connection (a restart, wait_timeout, a KILL)
        _kill(first)
        # Then the next use gets a live connection, with no error
        with engine.connect() as conn:
            second = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        assert second != first
    finally:
        engine.dispose()


def test_a_connection_lent_again_at_once_is_not_pinged(mysql_url, tmp_path, monkeypatch):
    engine = engine_mod.make_engine(mysql_url, Layout(tmp_path))
    pings = []
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            raw = conn.connection.dbapi_connection
        real_ping = raw.ping
        monkeypatch.setattr(raw, "ping", lambda *a, **kw: pings.append(1) or real_ping(*a, **kw))
        for _ in range(20):
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        assert pings == []
        # And one idle past the limit is
        monkeypatch.setattr(engine_mod, "IDLE_PING_S", 0.0)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert pings == [1]
    finally:
        engine.dispose()
