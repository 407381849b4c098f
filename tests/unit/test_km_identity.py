"""Accounts and credential names are identities: compared byte for byte, never aliased.

On MariaDB's default collation ``get("SEC_ACCT", "aws")`` used to return ``sec_acct``'s secret,
and a put under another spelling re-sealed the row under that spelling so it never decrypted
again. These tests run on SQLite and, where the server is up (always in CI), MariaDB/MySQL.
"""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enstratus_workers.db import migrate
from enstratus_workers.km import KMConflict, KMNotFound
from enstratus_workers.km.schema import credentials
from enstratus_workers.km.spelling import fold
from enstratus_workers.km.store import CredentialStore
from tests.unit.test_km_store import MASTER, db_path, store, url  # noqa: F401 - SQLite/MySQL fixtures

ORIGINAL = ("sec_acct", "aws")
VARIANTS = [("SEC_ACCT", "aws"), ("séc_acct", "áws"), ("sec_acct ", "aws "),       # the finding's
            ("sec_acct", "AWS"), ("sec_acct", "aws\t"), ("se\u0301c_acct", "aws"),  # and their kin
            ("SEC_ACCT", "gce")]


def test_other_spellings_never_reach_the_stored_secret(store):
    # Given sec_acct's credential aws
    store.put(*ORIGINAL, b"sec-acct-secret")
    for account, name in VARIANTS:
        # When another spelling of the account or the name is read
        with pytest.raises(KMNotFound):
            store.get(account, name)
        # Then nothing is found; and a put under it is refused, naming the existing spelling
        with pytest.raises(KMConflict) as err:
            store.put(account, name, b"attacker-or-typo")
        assert "sec_acct" in str(err.value) or "'aws'" in str(err.value)
        assert "sec-acct-secret" not in str(err.value)
    # And the original still decrypts, unchanged, at version 1, the only row there is
    cred = store.get(*ORIGINAL)
    assert (cred.secret.reveal(), cred.version) == (b"sec-acct-secret", 1)
    assert [i.name for i in store.list("sec_acct")] == ["aws"]
    assert store.list("SEC_ACCT") == [] and store.list("sec_acct ") == []


def test_a_case_variant_put_is_refused_and_the_stored_secret_still_decrypts(store):
    # Given the finding's sequence: a credential, then a put under another case of its name
    store.put("sec_acct", "aws", b"first")
    with pytest.raises(KMConflict) as err:
        store.put("sec_acct", "AWS", b"second")
    # Then the refusal names the existing credential, and the stored secret still decrypts
    assert "'aws'" in str(err.value) and err.value.code == "conflict"
    assert store.get("sec_acct", "aws").secret.reveal() == b"first"
    # And the exact spelling still replaces it
    assert store.put("sec_acct", "aws", b"third") == 2
    assert store.get("sec_acct", "aws").secret.reveal() == b"third"


def test_distinct_accounts_and_names_are_unaffected(store):
    # Spellings that differ by more than case, accents and trailing spaces are separate credentials
    pairs = [("sec_acct", "aws"), ("sec_acct2", "aws"), (" sec_acct", "aws"), ("sec_acct", "aws2"),
             ("sec_acct", "aws-prod")]
    for i, (account, name) in enumerate(pairs):
        store.put(account, name, b"s%d" % i)
    for i, (account, name) in enumerate(pairs):
        assert store.get(account, name).secret.reveal() == b"s%d" % i


SPELLINGS = [("a", "x"), ("A", "x"), ("á", "x"), ("a ", "x"), ("a", "X"), ("a", "x "),
             ("a", "y"), ("A", "y"), ("b", "x"), ("B", "ẋ")]


def run_puts(store, sequence):
    """Apply ``sequence`` of (spelling index, secret) puts, checking every read after each one."""
    model: dict[tuple[str, str], bytes] = {}
    for index, secret in sequence:
        account, name = SPELLINGS[index]
        try:
            store.put(account, name, secret)
        except KMConflict:
            # refused only because another spelling of the account, or of the credential, exists
            assert (account, name) not in model
            assert any(fold(a) == fold(account) and (a != account or fold(n) == fold(name))
                       for a, n in model)
        else:
            model[(account, name)] = secret
        for (account, name), expected in model.items():
            assert store.get(account, name).secret.reveal() == expected
        for account, name in SPELLINGS:
            if (account, name) not in model:
                with pytest.raises(KMNotFound):
                    store.get(account, name)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SPELLINGS) - 1), st.binary(min_size=1, max_size=8)),
                max_size=12))
def test_stored_secrets_decrypt_after_any_sequence_of_puts_on_sqlite(sequence):
    store = CredentialStore.open("sqlite://", MASTER)
    try:
        run_puts(store, sequence)
    finally:
        store.close()


@pytest.mark.mysql
def test_stored_secrets_decrypt_after_a_long_sequence_of_puts_on_mysql(mysql_url):
    rng = random.Random(2013)
    sequence = [(rng.randrange(len(SPELLINGS)), rng.randbytes(6)) for _ in range(30)]
    store = CredentialStore.open(mysql_url, MASTER)
    try:
        run_puts(store, sequence)
    finally:
        store.close()


# -- the migration of databases made before the identity columns -------------------------------

def legacy_table(metadata: sa.MetaData) -> sa.Table:
    """The ``credentials`` table as releases before the KM schema version created it."""
    return sa.Table(
        "credentials", metadata,
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(191), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("secret", sa.LargeBinary(512 * 1024), nullable=False),
        sa.Column("master_key_id", sa.String(16), nullable=False),
        sa.Column("metadata", sa.Text(1 << 20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        mysql_charset="utf8mb4",
    )


def sealed_rows(rows):
    """Rows as the old release wrote them: the secret sealed under (account, name, kind)."""
    out = []
    for n, (account, name, secret) in enumerate(rows):
        helper = CredentialStore.open("sqlite://", MASTER)  # one each: the old release had no rule
        try:
            helper.put(account, name, secret)
            with helper._engine.connect() as conn:  # the sealed bytes, as the old table held them
                row = conn.execute(sa.select(credentials)).one()
        finally:
            helper.close()
        out.append(dict(account=account, name=name, kind=row.kind, secret=row.secret,
                        master_key_id=row.master_key_id, metadata="{}", version=1,
                        created_ms=n, updated_ms=n))
    return out


def make_legacy_database(url, rows):
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = legacy_table(meta)
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), sealed_rows(rows))
    finally:
        engine.dispose()
    return table


HEAD = migrate.script("km").get_current_head()


def stored_version(url):
    """The KM chain's revision in the database (the hand versions are gone once it is stamped)."""
    engine = sa.create_engine(url)
    try:
        assert "enstratus_schema_version" not in sa.inspect(engine).get_table_names()
        return migrate.current(engine, "km").current
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_an_old_mariadb_credentials_table_is_migrated_to_exact_identities(mysql_url):
    # Given a credentials table made by the old release, in MariaDB's default collation
    table = make_legacy_database(mysql_url, [("sec_acct", "aws", b"sec-acct-secret"),
                                             ("42", "ssh", b"ssh-key")])
    engine = sa.create_engine(mysql_url)
    try:
        with engine.connect() as conn:   # where another account's spelling found this row
            assert conn.execute(sa.select(table.c.account).where(
                (table.c.account == "SÉC_ACCT") & (table.c.name == "áws "))).scalars().all() == ["sec_acct"]
        # When the KM opens it
        store = CredentialStore.open(mysql_url, MASTER)
        try:
            # Then the schema is at the current version, every identity column exact
            assert stored_version(mysql_url) == HEAD
            with engine.connect() as conn:
                collations = dict(conn.execute(sa.text(
                    "SELECT column_name, collation_name FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = 'credentials' "
                    "AND column_name IN ('account', 'name', 'kind', 'account_key', 'name_key')")).all())
            assert len(collations) == 5 and set(collations.values()) == {"utf8mb4_nopad_bin"}
            # And the old secrets decrypt under their exact spelling only
            assert store.get("sec_acct", "aws").secret.reveal() == b"sec-acct-secret"
            assert store.get("42", "ssh").secret.reveal() == b"ssh-key"
            for account, name in VARIANTS:
                with pytest.raises(KMNotFound):
                    store.get(account, name)
            # And other spellings are refused, the exact one replaces
            with pytest.raises(KMConflict):
                store.put("SEC_ACCT", "aws", b"x")
            assert store.put("sec_acct", "aws", b"rotated") == 2
        finally:
            store.close()
        # And a second start finds nothing left to migrate
        CredentialStore.open(mysql_url, MASTER).close()
        assert stored_version(mysql_url) == HEAD
    finally:
        engine.dispose()


def test_an_old_sqlite_table_with_two_spellings_keeps_both_readable(tmp_path):
    # Given an old SQLite database (binary columns) holding two spellings of one credential
    url = f"sqlite:///{tmp_path / 'credentials.db'}"
    make_legacy_database(url, [("acct", "aws", b"lower"), ("acct", "AWS", b"upper")])
    # When the KM opens it
    store = CredentialStore.open(url, MASTER)
    try:
        # Then both stay readable and replaceable under their exact spelling
        assert stored_version(url) == HEAD
        assert store.get("acct", "aws").secret.reveal() == b"lower"
        assert store.get("acct", "AWS").secret.reveal() == b"upper"
        assert store.put("acct", "AWS", b"upper-2") == 2
        assert store.get("acct", "AWS").secret.reveal() == b"upper-2"
        # But a third spelling is refused
        with pytest.raises(KMConflict):
            store.put("acct", "Aws", b"third")
    finally:
        store.close()


def test_a_newer_schema_is_refused(url):
    CredentialStore.open(url, MASTER).close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE enstratus_migration_km SET version_num = 'km_0099'")
    finally:
        engine.dispose()
    with pytest.raises(migrate.SchemaTooNew, match="km_0099.*newer enstratus-workers"):
        CredentialStore.open(url, MASTER)
