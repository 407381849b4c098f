"""The credentials store: secrets encrypted at rest, rows bound to their place, a private master key.

The behaviour tests run against SQLite and, where the server is up (always in CI), MariaDB/MySQL.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest
import sqlalchemy as sa

from enstratus_workers.config.settings import Secret
from enstratus_workers.errors import ConfigError
from enstratus_workers.km import KMNotFound
from enstratus_workers.km.store import (CorruptCredential, CredentialStore, credentials,
                                        load_or_create_master_key)

SECRET = b"AKIA-very-secret-access-key-0123456789"
MASTER = Secret(bytes(range(32)))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "credentials.db"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request, db_path):
    if request.param == "sqlite":
        return f"sqlite:///{db_path}"
    return request.getfixturevalue("mysql_url")


@pytest.fixture
def store(url):
    s = CredentialStore.open(url, MASTER)
    yield s
    s.close()


def store_row_secret(url, account):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(credentials.c.secret).where(credentials.c.account == account)).scalar_one()
    finally:
        engine.dispose()


def tamper_secret(url, account, sealed):
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(credentials.update().where(credentials.c.account == account).values(secret=sealed))
    finally:
        engine.dispose()


def tamper(url, statement):
    """What an attacker with write access to the database (but not the master key) can do."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_put_get_list_delete(store):
    # Given a credential stored for account 42
    assert store.put("42", "aws", SECRET, "api_key", {"region": "us-east-1"}, now=1000) == 1
    # When it is read back
    cred = store.get("42", "aws")
    # Then secret, kind, metadata, version and time come back, and the secret is hidden in repr
    assert cred.secret.reveal() == SECRET
    assert (cred.kind, dict(cred.metadata), cred.version, cred.updated_ms) == ("api_key", {"region": "us-east-1"}, 1, 1000)
    assert SECRET.decode() not in repr(cred)
    # And list shows it without any secret, other accounts see nothing
    [info] = store.list("42")
    assert (info.name, info.kind, dict(info.metadata)) == ("aws", "api_key", {"region": "us-east-1"})
    assert not hasattr(info, "secret") and store.list("43") == []
    # And delete removes it; a second delete or get is a clean KMNotFound
    store.delete("42", "aws")
    with pytest.raises(KMNotFound):
        store.get("42", "aws")
    with pytest.raises(KMNotFound):
        store.delete("42", "aws")


def test_put_again_replaces_and_bumps_the_version(store):
    store.put("42", "ssh", b"old", "ssh_key", {}, now=1)
    assert store.put("42", "ssh", b"new", "ssh_key", {"fp": "ab:cd"}, now=2) == 2
    cred = store.get("42", "ssh")
    assert (cred.secret.reveal(), cred.version, cred.updated_ms, dict(cred.metadata)) == (b"new", 2, 2, {"fp": "ab:cd"})


def test_the_database_file_never_holds_the_plaintext(db_path):
    # Given a secret stored and the store closed (everything flushed to the file)
    store = CredentialStore.open(f"sqlite:///{db_path}", MASTER)
    store.put("42", "aws", SECRET, "api_key", {"label": "prod"})
    store.close()
    # Then the file holds the metadata label but not the secret
    raw = db_path.read_bytes()
    assert b"prod" in raw
    assert SECRET not in raw and SECRET[:12] not in raw


def test_the_sqlite_file_is_private(db_path):
    CredentialStore.open(f"sqlite:///{db_path}", MASTER).close()
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700


def test_a_secret_copied_onto_another_row_does_not_decrypt(store, url):
    # Given two accounts' credentials
    store.put("42", "aws", SECRET, "api_key", {})
    store.put("43", "aws", b"account-43-key", "api_key", {})
    # When someone with write access to the database copies account 42's sealed secret onto 43
    sealed = store_row_secret(url, "42")
    tamper_secret(url, "43", sealed)
    # Then reading 43 fails loudly instead of handing out 42's key
    with pytest.raises(CorruptCredential) as err:
        store.get("43", "aws")
    assert SECRET.decode() not in str(err.value)
    assert store.get("42", "aws").secret.reveal() == SECRET


def test_relabelling_the_kind_of_a_row_is_detected(store, url):
    store.put("42", "cert", SECRET, "certificate", {})
    tamper(url, "UPDATE credentials SET kind = 'api_key'")
    with pytest.raises(CorruptCredential):
        store.get("42", "cert")


def test_another_master_key_cannot_read_the_rows(store, url):
    store.put("42", "aws", SECRET, "api_key", {})
    other = CredentialStore.open(url, Secret(bytes(32)))
    try:
        with pytest.raises(CorruptCredential):
            other.get("42", "aws")
    finally:
        other.close()


def test_concurrent_puts_of_one_credential_all_land(store):
    # Given eight threads replacing the same credential at once
    errors = []

    def put(i):
        try:
            store.put("42", "aws", b"v%d" % i, "api_key", {})
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every put was applied once: the version counts them
    assert errors == []
    assert store.get("42", "aws").version == 8


def test_rows_record_which_master_key_sealed_them(store, url):
    store.put("42", "aws", SECRET, "api_key", {})
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            kid = conn.execute(sa.select(credentials.c.master_key_id)).scalar_one()
    finally:
        engine.dispose()
    assert len(kid) == 16 and bytes(range(32)).hex() not in kid


# -- the master key file ----------------------------------------------------------------------

def test_master_key_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "classes" / "km-master.key"
    key = load_or_create_master_key(path)
    assert len(key.reveal()) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A second start reads the same key and leaves no temporary file behind
    assert load_or_create_master_key(path) == key
    assert sorted(os.listdir(path.parent)) == ["km-master.key"]


def test_master_key_readable_by_group_or_others_is_refused(tmp_path):
    path = tmp_path / "km-master.key"
    load_or_create_master_key(path)
    for mode in (0o640, 0o604):
        os.chmod(path, mode)
        with pytest.raises(ConfigError) as err:
            load_or_create_master_key(path)
        assert "chmod 600" in str(err.value) and str(path) in str(err.value)


def test_master_key_of_the_wrong_size_is_refused(tmp_path):
    path = tmp_path / "km-master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"too short")
    os.close(fd)
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_or_create_master_key(path)


def test_racing_starts_agree_on_one_master_key(tmp_path):
    # Given eight KMs starting at once on a fresh install
    path = tmp_path / "km-master.key"
    keys, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        keys.append(load_or_create_master_key(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then they all use the same key
    assert len(keys) == 8 and len(set(keys)) == 1
