"""Loading the five config files into the one immutable ``Settings`` every daemon gets at start.

Every file is read even after one fails, so a single start (or ``enstratus-workers config check``)
reports every problem in every file, each naming its file, key and line.
"""

from __future__ import annotations

import logging

from enstratus_workers.config import km_file, mq_file, persistence_file, provisioning_file, worker_file
from enstratus_workers.config.problems import flatten, raise_all
from enstratus_workers.config.settings import Settings
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout

log = logging.getLogger(__name__)

# field of Settings -> (file name under classes/, reader)
READERS = {
    "mq": (mq_file.FILENAME, mq_file.read_mq),
    "worker": (worker_file.FILENAME, worker_file.read_worker),
    "persistence": (persistence_file.FILENAME, persistence_file.read_persistence),
    "km_client": (km_file.FILENAME, km_file.read_km_client),
    "provisioning": (provisioning_file.FILENAME, provisioning_file.read_provisioning),
}


def load_settings(layout: Layout) -> Settings:
    """The validated settings of the install at ``layout``.

    Raises ``ConfigError`` naming file, key and line; with several problems it is a
    ``ConfigErrors`` whose ``errors`` lists each. Missing files mean defaults, except
    ``enstratus-provisioning.cfg``, which must exist.
    """
    errors: list[ConfigError] = []
    parts = {}
    for field, (filename, read) in READERS.items():
        path = layout.classes_dir / filename
        try:
            parts[field] = read(path)
        except ConfigError as exc:
            errors.extend(flatten(exc))
        else:
            log.debug("read %s%s", path, "" if parts[field].source else " (missing: defaults)")
    raise_all(errors)
    return Settings(home=layout.home, **parts)


def check_config(layout: Layout) -> list[ConfigError]:
    """Every problem of the install's config files, for ``config check``; empty if they are valid."""
    try:
        load_settings(layout)
    except ConfigError as exc:
        return flatten(exc)
    return []
