"""``dasein-persistence.properties``: which store (SQLite, relational or Riak) backs each bucket."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import MappingProxyType

from enstratus_workers.config import converters as conv
from enstratus_workers.config.problems import raise_all
from enstratus_workers.config.propfile import Prop, PropFile
from enstratus_workers.config.settings import PersistenceSettings

FILENAME = "dasein-persistence.properties"
BACKENDS = ("sqlite", "relational", "riak")
BUCKET_PREFIX = "dsn.persistentCache."
_backend = partial(conv.choice, options=BACKENDS)

PROPS = (
    Prop("dsn.cache.default", "default_backend", _backend),
    Prop("dasein.persist.riak.host", "riak_host", conv.non_empty),
    Prop("dasein.persist.riak.port", "riak_port", partial(conv.integer, lo=1, hi=65535)),
    Prop("dasein.persist.riak.useSsl", "riak_ssl", conv.boolean),
    Prop("dasein.persist.sqlite.path", "sqlite_path", lambda text: Path(conv.non_empty(text))),
    Prop("dsn.relational.url", "relational_url", conv.optional_db_url, secret=True, url=True),
)


def _buckets(f: PropFile) -> dict[str, str]:
    buckets = {}
    for key in f.entries:
        if key.startswith(BUCKET_PREFIX):
            name = key[len(BUCKET_PREFIX):]
            if not name.strip():
                f.error(f"names no bucket: write {BUCKET_PREFIX}<bucket> = {'|'.join(BACKENDS)}", key, f.line(key))
                continue
            backend = f.get(key, _backend, None)
            if backend is not None:
                buckets[name] = backend
    return buckets


def validate(f: PropFile, settings: PersistenceSettings) -> None:
    """The checks that involve more than one key, recorded on ``f``."""
    users = [key for key, entry in f.entries.items()
             if (key == "dsn.cache.default" or key.startswith(BUCKET_PREFIX))
             and entry.value.strip() == "relational"]
    if not settings.relational_url and users:
        where = ", ".join(f"{key} (line {f.line(key)})" for key in users)
        f.error(f"is required: the relational store is used by {where}", "dsn.relational.url",
                f.line("dsn.relational.url"))


def read_persistence(path: Path) -> PersistenceSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad."""
    f = PropFile.read(path)
    if f is None:
        return PersistenceSettings()
    f.check_exposure(PROPS)
    buckets = _buckets(f)
    settings = PersistenceSettings(**f.convert(PROPS), bucket_backends=MappingProxyType(buckets), source=path)
    f.check_unknown({p.key for p in PROPS} | {k for k in f.entries if k.startswith(BUCKET_PREFIX)})
    validate(f, settings)
    f.errors.sort(key=lambda e: e.line or 0)
    raise_all(f.errors)
    return settings
