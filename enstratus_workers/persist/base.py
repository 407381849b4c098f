"""The persistence contract: what actions know about the store of platform objects.

Actions read and write servers, firewalls, volumes and accounts through a ``Store``; they never
import SQLAlchemy or requests for it. Each backend lives in its own module (``sqlite.py``,
``relational.py``, ``riak.py``) and turns its library's exceptions into the errors below.

The model is Riak's, because Riak is the most constrained backend: objects are JSON documents
under (bucket, key), each with at most one value per secondary index, and writes are guarded by
optimistic concurrency. A write states what it expects to find:

* ``expected=ANY`` (the default) overwrites whatever is there, or creates;
* ``expected=ABSENT`` creates only: an existing object makes it fail;
* ``expected=<version>`` (the ``version`` of a ``StoredObject`` you read) succeeds only if the
  object is still at that version.

A write whose expectation does not hold raises ``StaleWriteError`` and changes nothing, so two
writers never silently lose each other's update: the loser re-reads and tries again. Versions are
opaque tokens of the backend that produced them (an ``int`` for SQL, a vclock for Riak).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping

from enstratus_workers.errors import EnstratusError
from enstratus_workers.persist import values


class StoreError(EnstratusError):
    """A persistence operation failed; base of the persistence errors."""


class NotFound(StoreError):
    """No object is stored under the bucket and key."""

    def __init__(self, bucket: str, key: str):
        self.bucket, self.key = bucket, key
        super().__init__(f"no object {key!r} in bucket {bucket!r}")


class StaleWriteError(StoreError):
    """A conditional write or delete found another state than it expected; nothing was changed."""

    def __init__(self, bucket: str, key: str, reason: str):
        self.bucket, self.key = bucket, key
        super().__init__(f"stale write to {bucket!r}/{key!r}: {reason}")


class StoreUnavailable(StoreError):
    """The backend could not be reached (connection refused, timed out, lost); retry later."""


class SiblingsError(StoreError):
    """Riak holds concurrent versions (siblings) of an object: the store will not pick one.

    Picking a sibling would silently drop the others' writes. Siblings only appear in buckets
    with ``allow_mult=true``; an unconditional ``put`` (``expected=ANY``) replaces them all.
    """


class Expect(enum.Enum):
    """What a write expects to find, besides a version: anything, or nothing."""

    ANY = "any"
    ABSENT = "absent"

    def __repr__(self):
        return self.name


ANY = Expect.ANY
ABSENT = Expect.ABSENT


@dataclass(frozen=True)
class StoredObject:
    """One object as stored: its JSON ``data``, the ``schema`` version of that data and ``version``.

    ``schema`` is the version of the data's shape, chosen by the writer, so a reader can migrate
    old objects; ``0`` marks a value stored without the envelope (written by another client).
    """

    bucket: str
    key: str
    data: Any
    indexes: Mapping[str, str | int] = field(default_factory=dict)
    version: Hashable = None
    schema: int = 1


class Store(abc.ABC):
    """Objects by bucket and key, with secondary indexes and optimistic concurrency.

    The public methods validate their arguments once, here, and call the backend's ``_``
    methods; so every backend refuses the same bad names and values. All methods are safe to
    call from several threads. A store holds connections: ``close()`` it (or use ``with``).
    """

    #: the backend's name in dasein-persistence.properties: "sqlite", "relational", "riak"
    name: str = ""

    def put(self, bucket: str, key: str, data: Any, indexes: Mapping[str, str | int] | None = None,
            *, expected: Expect | Hashable = ANY, schema: int = 1) -> StoredObject:
        """Store ``data`` (JSON) with its indexes, replacing the old indexes; return what was stored.

        Raises ``StaleWriteError`` when ``expected`` does not hold (see the module docstring).
        """
        values.check_bucket(bucket)
        values.check_key(key)
        checked = values.check_indexes(indexes or {})
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise ValueError(f"schema must be an integer >= 1, not {schema!r}")
        text = values.encode(data, schema)
        return self._put(bucket, key, data, text, schema, checked, expected)

    def get(self, bucket: str, key: str) -> StoredObject:
        """The object stored under ``key``; raises ``NotFound``."""
        values.check_bucket(bucket)
        values.check_key(key)
        return self._get(bucket, key)

    def delete(self, bucket: str, key: str, *, expected: Expect | Hashable = ANY) -> None:
        """Delete the object and its index entries.

        ``expected=ANY`` is idempotent (deleting nothing is fine); with a version, the object must
        still be at that version or ``StaleWriteError`` is raised and the object is kept.
        """
        values.check_bucket(bucket)
        values.check_key(key)
        if expected is ABSENT:
            raise ValueError("delete(expected=ABSENT) makes no sense: pass ANY or a version")
        self._delete(bucket, key, expected)

    def list_keys(self, bucket: str) -> list[str]:
        """Every key in the bucket, sorted. Costly on big Riak clusters: prefer an index query."""
        values.check_bucket(bucket)
        return sorted(set(self._list_keys(bucket)))

    def query(self, bucket: str, index: str, value: str | int) -> list[str]:
        """Keys whose ``index`` equals ``value``, sorted."""
        values.check_bucket(bucket)
        values.check_index_value(index, value)
        return sorted(set(self._query(bucket, index, value, value)))

    def query_range(self, bucket: str, index: str, lo: str | int, hi: str | int) -> list[str]:
        """Keys whose ``index`` lies in ``[lo, hi]`` (both included; strings by UTF-8 bytes), sorted."""
        values.check_bucket(bucket)
        values.check_index_value(index, lo)
        values.check_index_value(index, hi)
        return sorted(set(self._query(bucket, index, lo, hi)))

    @abc.abstractmethod
    def ping(self) -> None:
        """Return if the backend answers; raise ``StoreUnavailable`` otherwise."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # The backend's half: arguments are already validated.

    @abc.abstractmethod
    def _put(self, bucket: str, key: str, data: Any, text: str, schema: int,
             indexes: dict[str, str | int], expected) -> StoredObject:
        """``text`` is ``data`` already encoded in its envelope."""

    @abc.abstractmethod
    def _get(self, bucket: str, key: str) -> StoredObject:
        ...

    @abc.abstractmethod
    def _delete(self, bucket: str, key: str, expected) -> None:
        ...

    @abc.abstractmethod
    def _list_keys(self, bucket: str) -> list[str]:
        ...

    @abc.abstractmethod
    def _query(self, bucket: str, index: str, lo: str | int, hi: str | int) -> list[str]:
        """Keys with ``lo <= index value <= hi``; duplicates and order do not matter."""
