"""Persistence of the platform's objects (servers, firewalls, volumes, accounts).

``open_store(settings.persistence, layout)`` gives the one ``Persistence`` a worker passes to
its actions; the contract is in ``base.py``, one backend per module. Only the backends some
bucket is routed to are opened (and imported).
"""

from __future__ import annotations

import functools

from enstratus_workers.config.settings import PersistenceSettings
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout
from enstratus_workers.persist.base import (ABSENT, ANY, Expect, NotFound, SiblingsError,
                                            StaleWriteError, Store, StoredObject, StoreError,
                                            StoreUnavailable)
from enstratus_workers.persist.routing import Persistence

BACKENDS = ("sqlite", "relational", "riak")

__all__ = ["ABSENT", "ANY", "BACKENDS", "Expect", "NotFound", "Persistence", "SiblingsError",
           "StaleWriteError", "Store", "StoredObject", "StoreError", "StoreUnavailable",
           "open_store"]


def _check_routes(settings: PersistenceSettings) -> set[str]:
    """The backend names in use; an unknown one is a config error naming its key."""
    routes = {"dsn.cache.default": settings.default_backend}
    routes.update({f"dsn.persistentCache.{b}": name for b, name in settings.bucket_backends.items()})
    for key, name in routes.items():
        if name not in BACKENDS:
            raise ConfigError(f"unknown persistence backend {name!r} (one of {', '.join(BACKENDS)})",
                              file=settings.source, key=key)
    used = set(routes.values())
    if "relational" in used and not settings.relational_url:
        raise ConfigError("buckets are routed to the relational backend but no database URL is set",
                          file=settings.source, key="dsn.relational.url")
    return used


def _open_backend(name: str, settings: PersistenceSettings, layout: Layout) -> Store:
    if name == "sqlite":
        from enstratus_workers.persist.sqlite import SqliteStore
        return SqliteStore(layout.resolve(settings.sqlite_path))
    if name == "relational":
        from enstratus_workers.persist.relational import RelationalStore
        return RelationalStore(settings.relational_url.reveal())
    from enstratus_workers.persist.riak import RiakStore
    host = f"[{settings.riak_host}]" if ":" in settings.riak_host else settings.riak_host
    return RiakStore(f"{'https' if settings.riak_ssl else 'http'}://{host}:{settings.riak_port}")


def open_store(settings: PersistenceSettings, layout: Layout, *, on_first_use: bool = False) -> Persistence:
    """Open the backends the settings route buckets to. Connections are made on first use.

    With ``on_first_use`` each backend is opened (and its module imported) only when a bucket
    routed to it is first used: a worker process, whose actions may never touch persistence,
    does not load SQLAlchemy (or requests, for Riak) until one does. The routes are still
    checked now; an error in opening a backend is raised then, to the action that used it.
    """
    persistence = Persistence({name: functools.partial(_open_backend, name, settings, layout)
                               for name in sorted(_check_routes(settings))}, settings.backend_for)
    if not on_first_use:
        try:
            persistence.open_all()
        except BaseException:
            persistence.close()
            raise
    return persistence
