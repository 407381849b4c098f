"""One store for the actions, many underneath: each bucket goes to the backend configured for it.

``dasein-persistence.properties`` names a default backend (``dsn.cache.default``) and may send
single buckets elsewhere (``dsn.persistentCache.<bucket>``), e.g. servers in Riak and accounts in
MySQL. ``Persistence`` is itself a ``Store``, so an action never knows which backend it talks to.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

from enstratus_workers.errors import ConfigError
from enstratus_workers.persist.base import Store, StoredObject, StoreError

log = logging.getLogger(__name__)


class Persistence(Store):
    """Routes every call on a bucket to ``stores[backend_for(bucket)]``; closes them all.

    ``stores`` holds one open store per backend name in use; ``backend_for`` maps a bucket to
    one of those names (``PersistenceSettings.backend_for``).
    """

    name = "routing"

    def __init__(self, stores: Mapping[str, Store], backend_for: Callable[[str], str]):
        self._stores = dict(stores)
        self._backend_for = backend_for

    @property
    def stores(self) -> Mapping[str, Store]:
        """The open backends by name, for health checks."""
        return dict(self._stores)

    def store_for(self, bucket: str) -> Store:
        """The backend that holds ``bucket``."""
        if not self._stores:
            raise StoreError("persistence is closed")
        name = self._backend_for(bucket)
        try:
            return self._stores[name]
        except KeyError:
            raise ConfigError(f"bucket {bucket!r} is routed to backend {name!r}, which is not open "
                              f"(open: {', '.join(sorted(self._stores)) or 'none'})") from None

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
        """Ping every backend; the first failure is raised."""
        if not self._stores:
            raise StoreError("persistence is closed")
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
        if failure is not None:
            raise StoreError(f"closing a persistence backend failed: {failure}") from failure
