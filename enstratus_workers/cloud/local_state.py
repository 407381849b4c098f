"""The local cloud's state directory: who owns it, and its nodes, in one JSON file under a lock.

Several worker processes may drive the same local cloud at once, so every read-modify-write
holds an exclusive ``flock`` on ``<dir>/.lock`` and the file is replaced atomically. The file
holds the owner's key and a salted PBKDF2 hash of the secret (never the secret): the first
driver to open an empty directory becomes its owner, later ones must present the same key and
secret, as a real cloud refuses a wrong one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Iterator

from libcloud.common.types import InvalidCredsError

from enstratus_workers.clock import now_ms

STATE_FILE = "cloud.json"
LOCK_FILE = ".lock"
KDF_ITERATIONS = 50_000
FORMAT = 1


@contextlib.contextmanager
def locked(root: Path, lock_file: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``root/lock_file`` (made with ``root`` if missing) while the block runs."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(root / lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _hash_secret(secret: str, salt: bytes, iterations: int) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations).hex()


class LocalCloudState:
    """The state directory ``root``; ``transaction()`` yields the state dict and saves it."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def node_dir(self, node_id: str) -> Path:
        return self.root / "nodes" / node_id

    def _locked(self):
        return locked(self.root, LOCK_FILE)

    def _load(self) -> dict | None:
        try:
            return json.loads((self.root / STATE_FILE).read_text("utf-8"))
        except FileNotFoundError:
            return None

    def _save(self, state: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".cloud.", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / STATE_FILE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def authenticate(self, key: str, secret: str) -> None:
        """Take ownership of an empty directory, or check ``key``/``secret`` against the owner's.

        Raises libcloud's ``InvalidCredsError``, as any driver does for refused credentials.
        """
        if not key or not secret:
            raise InvalidCredsError("the local cloud needs a key and a secret")
        with self._locked():
            state = self._load()
            if state is None:
                salt = secrets.token_bytes(16)
                self._save({"format": FORMAT, "key": key, "created_ms": now_ms(), "nodes": {},
                            "secret": {"kdf": "pbkdf2_sha256", "iterations": KDF_ITERATIONS,
                                       "salt": salt.hex(),
                                       "hash": _hash_secret(secret, salt, KDF_ITERATIONS)}})
                return
        stored = state["secret"]
        given = _hash_secret(secret, bytes.fromhex(stored["salt"]), int(stored["iterations"]))
        # compare both, always: the answer must not tell which of the two was wrong
        key_ok = hmac.compare_digest(key.encode("utf-8"), state["key"].encode("utf-8"))
        if not (hmac.compare_digest(given, stored["hash"]) and key_ok):
            raise InvalidCredsError("invalid key or secret for this local cloud")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """The state, locked; saved when the block ends without an exception."""
        with self._locked():
            state = self._load()
            if state is None:
                raise InvalidCredsError("the local cloud's state is gone; open the driver again")
            yield state
            self._save(state)

    def read(self) -> dict:
        with self._locked():
            state = self._load()
        if state is None:
            raise InvalidCredsError("the local cloud's state is gone; open the driver again")
        return state
