"""Loading the five config files into the one immutable ``Settings`` every daemon gets at start.

Every file is read even after one fails, so a single start (or ``enstratus-workers config check``)
reports every problem in every file, each naming its file, key and line.

``check_config`` reads what any daemon of the install reads, with that daemon's own reader (so
there is one parser per file and ``config check`` cannot pass what a daemon refuses): the five
files, ``admin.cfg`` (admin daemon), ``services/km/classes/km.cfg`` and the key file it names
(KM daemon), the admin token file if there is one, and the schedules' actions against the
registry the workers load (built-ins and plug-ins), and the placements against the hosts the
provisioning database knows (when it can be read).
"""

from __future__ import annotations

import logging

from pathlib import Path

from enstratus_workers.config import km_file, mq_file, persistence_file, provisioning_file, schedule_keys, worker_file
from enstratus_workers.config.problems import did_you_mean, flatten, raise_all
from enstratus_workers.config.propfile import PropFile
from enstratus_workers.config.provisioning_file import read_provisioning
from enstratus_workers.config.settings import Settings, WorkerSettings
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


def check_config(layout: Layout, registry=None) -> list[ConfigError]:
    """Every problem of the install's config files, for ``config check``; empty if they are valid.

    ``registry`` is the action registry to check schedules against (default: the one a worker
    builds, plug-ins included).
    """
    errors: list[ConfigError] = []
    settings = None
    try:
        settings = load_settings(layout)
    except ConfigError as exc:
        errors.extend(flatten(exc))
    for check in (_check_admin, _check_km):
        try:
            check(layout, settings)
        except ConfigError as exc:
            errors.extend(flatten(exc))
    if registry is None:
        from enstratus_workers.actions import default_registry

        registry = default_registry()
    errors.extend(unknown_schedules(layout.classes_dir / worker_file.FILENAME, registry))
    if settings is not None:   # placements against the fleet's hosts, as a daemon's start checks them
        from enstratus_workers.fleet.joining import placement_problems_offline

        errors.extend(placement_problems_offline(settings, layout))
    return errors


def unknown_schedules(path: Path, registry) -> list[ConfigError]:
    """A problem for each schedule of the ``worker.properties`` at ``path`` whose action
    ``registry`` does not have (the publisher would submit jobs that can only fail), pointing
    at its ``schedule.<action>.interval`` line. Judged even when other keys of the file are bad."""
    try:
        found = PropFile.read(path)
    except ConfigError:
        return []  # unreadable: load_settings reports it
    schedules = schedule_keys.read_schedules(found) if found is not None else WorkerSettings().schedules
    errors = []
    for s in schedules:
        if s.action in registry:
            continue
        key = f"schedule.{s.action}.interval"
        errors.append(ConfigError(
            f"no action {s.action!r} is registered (built-ins and plug-ins){did_you_mean(s.action, registry.names())}",
            file=path if found is not None else None, key=key,
            line=found.line(key) if found is not None else None))
    return errors


def _check_admin(layout: Layout, settings) -> None:
    from enstratus_workers.admin.config import load_admin_settings, load_token

    admin = load_admin_settings(layout)
    if not admin.token and admin.token_file.exists():
        load_token(admin)  # refuses a token file others can read, as the daemon does


def _check_km(layout: Layout, settings) -> None:
    from enstratus_workers.km.config import load_km_settings

    km = load_km_settings(layout)
    ours = settings.provisioning.source if settings is not None else layout.classes_dir / provisioning_file.FILENAME
    if ours is None or km.provisioning_cfg.resolve() != ours.resolve():
        read_provisioning(km.provisioning_cfg)  # the KM reads its traffic key from there
