"""The ``credentials`` database: each secret encrypted at rest under the KM master key.

One SQLAlchemy Core code path serves SQLite (the embedded default) and MySQL/MariaDB. A
secret is stored as ``nonce (12) | AES-256-GCM ciphertext+tag`` whose associated data binds the
account, the name and the kind: a row's secret copied onto another row (or relabelled as another
kind) fails to decrypt instead of handing one account's key to another. The master key never
leaves this process; ``master_key_id`` records which key sealed a row, for a future re-key.

Accounts and names compare byte for byte on every database (``schema.py``), and the associated
data is always the stored row's exact spelling, so a secret stays readable whatever sequence of
puts arrives. A put that would create another spelling of an existing account or credential
(case, accents, trailing spaces: ``spelling.py``) is refused with ``KMConflict``.

Kind and metadata are stored in clear so ``list`` needs no decryption: metadata is for labels
(region, key pair name, fingerprint), never for secrets.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enstratus_workers.clock import now_ms
from enstratus_workers.config import dburl
from enstratus_workers.config.settings import Secret
from enstratus_workers.db import retry
from enstratus_workers.db.engine import mysql_engine
from enstratus_workers.db.migrate import upgrade
from enstratus_workers.errors import ConfigError, DatabaseError
from enstratus_workers.km import KMConflict, KMError, KMNotFound
from enstratus_workers.km.envelope import KEY_SIZE, NONCE_SIZE, key_id
from enstratus_workers.km.protocol import Credential, CredentialInfo
from enstratus_workers.km.schema import credentials
from enstratus_workers.km.spelling import digest

log = logging.getLogger(__name__)

_AAD_PREFIX = b"enstratus-km credential v1\0"


class CorruptCredential(KMError):
    """A stored secret does not decrypt: wrong master key, or the row was altered or swapped."""

    code = "corrupt"


def _aad(account: str, name: str, kind: str) -> bytes:
    # length-prefixed, so ("ab", "c") and ("a", "bc") bind differently
    parts = [p.encode("utf-8") for p in (account, name, kind)]
    return _AAD_PREFIX + b"".join(struct.pack(">H", len(p)) + p for p in parts)


class CredentialStore:
    """Put, get, list and delete credentials; thread-safe (one pooled connection per call)."""

    def __init__(self, engine: sa.Engine, master_key: Secret):
        key = master_key.reveal()
        if len(key) != KEY_SIZE:
            raise ValueError(f"the master key is {KEY_SIZE} bytes")
        self._engine = engine
        self._aead = AESGCM(key)
        self._key_id = key_id(key).hex()
        try:
            upgrade(engine, "km")
        except sa.exc.SQLAlchemyError as exc:
            log.error("credentials schema: %s", type(exc).__name__)
            raise DatabaseError(f"cannot create or migrate the credentials tables: {type(exc).__name__}") from None

    @classmethod
    def open(cls, url: str, master_key: Secret) -> "CredentialStore":
        """Open (creating if needed) the database at ``url``; an SQLite file is made private."""
        nodes = dburl.parse(url)
        parsed = nodes.url
        if parsed.get_backend_name() == "mysql":   # one server, or a cluster's writer node
            return cls(mysql_engine(nodes, pool_pre_ping=True, pool_recycle=3600), master_key)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            _private_sqlite_file(Path(parsed.database))
            kwargs["connect_args"] = {"timeout": 15}
        return cls(sa.create_engine(parsed, **kwargs), master_key)

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self):
        return f"CredentialStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def put(self, account: str, name: str, secret: bytes, kind: str = "api_key",
            metadata: Mapping[str, Any] | None = None, now: int | None = None) -> int:
        """Create or replace a credential; return its new version (1 for a new one).

        Raises ``KMConflict`` when no credential has exactly this account and name but the
        account, or the name within it, is another spelling of an existing one (``spelling.py``).
        """
        now = now_ms() if now is None else now
        keys = dict(account_key=digest(account), name_key=digest(name))
        values = dict(kind=kind, master_key_id=self._key_id, updated_ms=now,
                      metadata=json.dumps(dict(metadata or {}), separators=(",", ":")))
        exact = (credentials.c.account == account) & (credentials.c.name == name)
        # The version is bumped in SQL, not read-then-written, so concurrent puts never lose one,
        # and the update is the transaction's first statement (SQLite then holds the write lock
        # from the start). Two first puts racing to insert: the loser's IntegrityError (or
        # MySQL's deadlock on the gap lock) sends it round again, down the update path, after the
        # service's jittered pause (``db/retry.py``): losers that came straight back deadlocked
        # again with each other before the winner's insert committed.
        def once() -> int:
            with self._engine.begin() as conn:
                sealed = self._seal(secret, account, name, kind)
                if conn.execute(credentials.update().where(exact).values(
                        version=credentials.c.version + 1, secret=sealed, **values)).rowcount:
                    row = conn.execute(sa.select(credentials.c.account, credentials.c.name,
                                                 credentials.c.version).where(exact)).one()
                    # The secret is bound to the spelling it was sealed under: make sure that
                    # is the stored row's, whatever the database's collation let match.
                    if (row.account, row.name) != (account, name):
                        raise KMConflict(f"credential {name!r} of account {account!r} matched the "
                                         f"stored spelling {row.name!r} of {row.account!r}; not replaced")
                    return row.version
                self._refuse_other_spellings(conn, account, name, keys)
                conn.execute(credentials.insert().values(account=account, name=name, version=1,
                                                         created_ms=now, secret=sealed, **keys, **values))
                return 1

        try:
            return retry.run(once, also=(sa.exc.IntegrityError,), what="credential put")
        except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
            if isinstance(exc, sa.exc.IntegrityError) or _is_deadlock(exc):
                raise DatabaseError("concurrent writes to one credential kept conflicting") from None
            raise _db_error("put", exc) from None
        except sa.exc.SQLAlchemyError as exc:
            raise _db_error("put", exc) from None

    def _seal(self, secret: bytes, account: str, name: str, kind: str) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, bytes(secret), _aad(account, name, kind))

    @staticmethod
    def _refuse_other_spellings(conn: sa.Connection, account: str, name: str, keys: dict) -> None:
        """``KMConflict`` if a new (account, name) would be another spelling of a stored one.

        An account that already exists under exactly this spelling may get new names (even if,
        from before the rule, another spelling of it exists too); a new account may not look
        like an existing one. The message names the existing spelling, never its secret.
        """
        c = credentials.c
        accounts = conn.execute(sa.select(c.account).distinct()
                                .where(c.account_key == keys["account_key"])).scalars().all()
        if accounts and account not in accounts:
            raise KMConflict(f"account {account!r} differs from the existing account {sorted(accounts)[0]!r} "
                             f"only by case, accents or trailing spaces; use the existing spelling")
        names = conn.execute(sa.select(c.name).where((c.account_key == keys["account_key"])
                                                     & (c.name_key == keys["name_key"]))).scalars().all()
        if names:
            raise KMConflict(f"credential {name!r} of account {account!r} differs from the existing "
                             f"credential {names[0]!r} only by case, accents or trailing spaces; "
                             f"use the existing spelling")

    def get(self, account: str, name: str) -> Credential:
        row = self._one(sa.select(credentials).where(
            (credentials.c.account == account) & (credentials.c.name == name)), "get")
        if row is None or (row.account, row.name) != (account, name):
            raise KMNotFound(f"no credential {name!r} for account {account!r}")
        sealed = bytes(row.secret)
        try:
            plain = self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:],
                                       _aad(row.account, row.name, row.kind))
        except InvalidTag:
            log.error("credential %r of account %r does not decrypt (master key id %s, row sealed "
                      "under %s): wrong master key or tampered row", name, account, self._key_id,
                      row.master_key_id)
            raise CorruptCredential(f"credential {name!r} of account {account!r} cannot be decrypted") from None
        return Credential(row.account, row.name, row.kind, Secret(plain), _meta(row.metadata),
                          row.version, row.updated_ms)

    def list(self, account: str) -> list[CredentialInfo]:
        cols = [credentials.c[c] for c in ("account", "name", "kind", "metadata", "version", "updated_ms")]
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.select(*cols).where(credentials.c.account == account)
                                    .order_by(credentials.c.name)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise _db_error("list", exc) from None
        return [CredentialInfo(r.account, r.name, r.kind, _meta(r.metadata), r.version, r.updated_ms)
                for r in rows if r.account == account]

    def delete(self, account: str, name: str) -> None:
        try:
            with self._engine.begin() as conn:
                deleted = conn.execute(credentials.delete().where(
                    (credentials.c.account == account) & (credentials.c.name == name))).rowcount
        except sa.exc.SQLAlchemyError as exc:
            raise _db_error("delete", exc) from None
        if not deleted:
            raise KMNotFound(f"no credential {name!r} for account {account!r}")

    def ping(self) -> None:
        self._one(sa.select(sa.literal(1)), "ping")

    def _one(self, query, what):
        try:
            with self._engine.connect() as conn:
                return conn.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise _db_error(what, exc) from None


def _is_deadlock(exc: sa.exc.OperationalError) -> bool:
    args = getattr(exc.orig, "args", ())
    return bool(args) and args[0] in (1205, 1213)  # MySQL lock wait timeout, deadlock


def _meta(text: str) -> Mapping[str, Any]:
    return MappingProxyType(json.loads(text))


def _db_error(what: str, exc: Exception) -> DatabaseError:
    # the driver's message can quote the URL or the statement's parameters: keep only the type
    log.error("credentials database %s failed: %s", what, type(exc).__name__)
    return DatabaseError(f"credentials database {what} failed ({type(exc).__name__})")


def _private_sqlite_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


# -- the master key ----------------------------------------------------------------------------

def load_or_create_master_key(path: Path) -> Secret:
    """The KM master key from ``path``, created (32 random bytes, mode 0600) on first start.

    The file is written under a temporary name and hard-linked into place, so two KMs starting
    at once agree on one key and nobody reads a half-written file. A key file that group or
    others can read is refused, as ssh refuses a private key: the key protects every secret.
    """
    path = Path(path)
    if not path.exists():
        _create_master_key(path)
    return _read_master_key(path)


def _create_master_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(KEY_SIZE))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.warning("created a new KM master key in %s: back it up, the credentials database "
                        "is unreadable without it", path)
        except FileExistsError:
            pass  # another KM created it first: use theirs
    finally:
        os.unlink(tmp)


def _read_master_key(path: Path) -> Secret:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"cannot open the KM master key: {exc.strerror}", file=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("the KM master key is not a regular file", file=path)
        if st.st_mode & 0o077:
            raise ConfigError(f"the KM master key is readable by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it", file=path)
        key = f.read(KEY_SIZE + 1)
    if len(key) != KEY_SIZE:
        raise ConfigError(f"the KM master key must be exactly {KEY_SIZE} bytes, found {len(key)}", file=path)
    return Secret(key)
