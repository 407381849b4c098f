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
from enstratus_workers.runtime.on_first_use import OnFirstUse

log = logging.getLogger(__name__)


class Persistence(Store):
    """Routes every call on a bucket to the backend ``backend_for(bucket)`` names; closes them all.

    ``backends`` gives, by name, how to open each backend in use; ``backend_for`` maps a bucket
    to one of those names (``PersistenceSettings.backend_for``). A backend is opened by the
    first call that needs it (or by ``open_all``); one that fails to open is tried again by the
    next call.
    """

    name = "routing"

    def __init__(self, backends: Mapping[str, Callable[[], Store]], backend_for: Callable[[str], str]):
        self._backends = {name: OnFirstUse(open_backend) for name, open_backend in backends.items()}
        self._backend_for = backend_for

    @property
    def stores(self) -> Mapping[str, Store]:
        """The open backends by name, for health checks."""
        return {name: store for name, b in self._backends.items() if (store := b.made()) is not None}

    def open_all(self) -> None:
        """Open every backend now (a daemon wants a bad backend to stop it at start)."""
        for b in self._backends.values():
            b.get()

    def store_for(self, bucket: str) -> Store:
        """The backend that holds ``bucket``."""
        if not self._backends:
            raise StoreError("persistence is closed")
        name = self._backend_for(bucket)
        backend = self._backends.get(name)
        if backend is None:
            raise ConfigError(f"bucket {bucket!r} is routed to backend {name!r}, which is not configured "
                              f"(configured: {', '.join(sorted(self._backends)) or 'none'})")
        return backend.get()

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
        if not self._backends:
            raise StoreError("persistence is closed")
        for b in self._backends.values():
            b.get().ping()

    def close(self) -> None:
        """Close every open backend, even if one of them fails to close."""
        failure = None
        for name, b in self._backends.items():
            try:
                b.drop(lambda store: store.close())
            except Exception as exc:  # keep closing the others
                log.warning("closing persistence backend %s failed: %s", name, exc)
                failure = failure or exc
        self._backends.clear()
        if failure is not None:
            raise StoreError(f"closing a persistence backend failed: {failure}") from failure
