"""One store for the actions, many underneath: each bucket goes to the backend configured for it.

``dasein-persistence.properties`` names a default backend (``dsn.cache.default``) and may send
single buckets elsewhere (``dsn.persistentCache.<bucket>``), e.g. servers in Riak and accounts in
MySQL. ``Persistence`` is itself a ``Store``, so an action never knows which backend it talks to.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

from enstratus_workers.errors import ConfigError
from enstratus_workers.persist.base import Store, StoredObject, StoreError

log = logging.getLogger(__name__)


class Persistence(Store):
    """Routes every call on a bucket to ``stores[backend_for(bucket)]``; closes them all.

    ``stores`` holds one open store per backend name in use; ``backend_for`` maps a bucket to
    one of those names (``PersistenceSettings.backend_for``). ``openers`` holds, by name, the
    backends to open on their first use instead (``open_store(..., on_first_use=True)``).
    """

    name = "routing"

    def __init__(self, stores: Mapping[str, Store], backend_for: Callable[[str], str],
                 openers: Mapping[str, Callable[[], Store]] | None = None):
        self._stores = dict(stores)
        self._openers = dict(openers or {})
        self._backend_for = backend_for
        self._closed = not self._stores and not self._openers
        self._opening = threading.Lock()

    @property
    def stores(self) -> Mapping[str, Store]:
        """The open backends by name, for health checks."""
        return dict(self._stores)

    def store_for(self, bucket: str) -> Store:
        """The backend that holds ``bucket``."""
        if self._closed:
            raise StoreError("persistence is closed")
        name = self._backend_for(bucket)
        try:
            return self._stores[name]
        except KeyError:
            if name in self._openers:
                return self._open(name)
            raise ConfigError(f"bucket {bucket!r} is routed to backend {name!r}, which is not open "
                              f"(open: {', '.join(sorted(self._stores)) or 'none'})") from None

    def _open(self, name: str) -> Store:
        with self._opening:
            if name not in self._stores:
                # kept until it succeeds: a backend that failed to open is tried again next time
                self._stores[name] = self._openers[name]()
                del self._openers[name]
            return self._stores[name]

    # The public methods validate, then these route; the backend validates again (cheaply).

    def _put(self, bucket, key, data, text, schema, indexes, expected) -> StoredObject:
        return self.store_for(bucket).put(bucket, key, data, indexes, expected=expected,
                                          schema=schema)

    def _get(self, bucket, key) -> StoredObject:
        return self.store_for(bucket).get(bucket, key)

    def _delete(self, bucket, key, expected) -> None:
        self.store_for(bucket).delete(bucket, key, expected=expected)

    def _list_keys(self, bucket) -> list[str]:
        return self.store_for(bucket).list_keys(bucket)

    def _query(self, bucket, index, lo, hi) -> list[str]:
        return self.store_for(bucket).query_range(bucket, index, lo, hi)

    def ping(self) -> None:
        """Ping every backend (opening those not open yet); the first failure is raised."""
        if self._closed:
            raise StoreError("persistence is closed")
        for name in list(self._openers):
            self._open(name)
        for store in self._stores.values():
            store.ping()

    def close(self) -> None:
        """Close every backend, even if one of them fails to close."""
        failure = None
        for name, store in self._stores.items():
            try:
                store.close()
            except Exception as exc:  # keep closing the others
                log.warning("closing persistence backend %s failed: %s", name, exc)
                failure = failure or exc
        self._stores.clear()
        self._openers.clear()
        self._closed = True
        if failure is not None:
            raise StoreError(f"closing a persistence backend failed: {failure}") from failure
