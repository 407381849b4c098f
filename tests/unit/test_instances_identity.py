"""The desired-state tables compare worker-type and queue names byte for byte, on SQLite and on
MariaDB, and a database made before they did is migrated."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from enstratus_workers.db import migrate
from enstratus_workers.db.instances import InstanceStore
from tests.fixtures import legacy_schema

SPELLINGS = ["tasks", "Tasks", "tasks ", "tásks"]


def assert_names_are_exact(engine):
    store = InstanceStore(engine)
    # Given queues and instances whose names differ only in case, accents or a trailing space
    for name in SPELLINGS:
        entry, created = store.add_queue(name)
        # Then each is a new queue, not the one before it
        assert created and entry.name == name
    for name in ("Tasks", "tasks"):
        store.create(name, [name], 0, 1)
    # And each is found only by its own bytes
    assert [q.name for q in store.queues()] == sorted(SPELLINGS)
    assert store.by_type("TASKS") is None and store.by_type("tasks").type == "tasks"
    assert store.queue("TASKS") is None and store.queue("tasks ").name == "tasks "
    assert store.consumers() == {"Tasks": ["Tasks"], "tasks": ["tasks"]}


def test_names_are_exact_on_sqlite():
    assert_names_are_exact(sa.create_engine("sqlite://"))


@pytest.mark.mysql
def test_names_are_exact_on_mariadb(mysql_url):
    engine = sa.create_engine(mysql_url)
    try:
        assert_names_are_exact(engine)
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_a_version_1_database_is_migrated_to_exact_names(mysql_url):
    engine = sa.create_engine(mysql_url)
    try:
        # Given the admin tables as version 1 made them: names in the server's default collation
        legacy_schema.make(engine, "admin", 1)
        old = InstanceStore(engine, ensure=False)
        old.add_queue("tasks")
        assert old.queue("TASKS ") is not None  # the old tables took another spelling for it
        # When a daemon of this release starts on it
        assert migrate.upgrade(engine, "admin").at_head
        # Then the names are exact, the stored ones kept, and the revision recorded once
        store = InstanceStore(engine)
        assert store.queue("TASKS ") is None and store.queue("tasks").name == "tasks"
        assert store.add_queue("Tasks")[1]
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT version_num FROM enstratus_migration_admin").scalars().all() == [
                migrate.script("admin").get_current_head()]
        assert "enstratus_schema_version" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_version_1_sqlite_database_only_has_its_version_raised():
    # Given a version-1 SQLite database (its names were exact already)
    engine = sa.create_engine("sqlite://")
    legacy_schema.make(engine, "admin", 1)
    # When the schema is upgraded, Then it is at head, and stays so on the next start
    first = migrate.upgrade(engine, "admin")
    assert first.at_head and migrate.upgrade(engine, "admin") == first
