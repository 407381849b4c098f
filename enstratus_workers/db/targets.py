"""Which databases this install owns, read from its config files: what ``db upgrade`` migrates.

A chain's database is named by the key the daemons read it from, so the command migrates exactly
what the daemons would at their start, and says where each came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from ..config import dburl
from ..layout import Layout
from .engine import make_engine


@dataclass(frozen=True)
class Target:
    chain: str
    source: str        # the config key naming the database
    url: str           # may hold a password: never printed (``where`` hides it)

    @property
    def where(self) -> str:
        return dburl.parse(self.url).render(hide_password=True)


def configured(layout: Layout) -> list[Target]:
    """Every chain's database under the install's configuration, in migration order."""
    from ..config import load_settings
    from ..km.config import load_km_settings

    settings = load_settings(layout)
    worker, persistence = settings.worker, settings.persistence
    targets = [Target("provisioning", "provisioning.url", worker.provisioning_url.reveal()),
               Target("admin", "provisioning.url", worker.provisioning_url.reveal()),
               Target("analytics", "analytics.url", worker.analytics_url.reveal()),
               Target("km", "credentials_url", load_km_settings(layout).credentials_url.reveal())]
    used = {persistence.default_backend, *persistence.bucket_backends.values()}
    if "sqlite" in used:
        path = layout.resolve(persistence.sqlite_path)
        targets.append(Target("persist", "dasein.persist.sqlite.path",
                              URL.create("sqlite", database=str(path)).render_as_string()))
    if "relational" in used:
        targets.append(Target("persist", "dsn.relational.url", persistence.relational_url.reveal()))
    return targets


def open_engine(target: Target, layout: Layout, *, create: bool) -> sa.Engine:
    """An engine for the target. ``create=False`` (``--sql``) creates no database or file."""
    parsed = dburl.parse(target.url).url
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = layout.resolve(parsed.database)
        if not create and not path.exists():
            # Reading would create the file; an empty in-memory database answers the same.
            return sa.create_engine("sqlite://")
        if target.chain == "km":  # the KM's file holds secrets: made 0600 before anything opens it
            from ..km.store import _private_sqlite_file

            _private_sqlite_file(Path(path))
    return make_engine(target.url, layout, create_database=create)
