"""What every daemon does once its databases are open: this host joins the fleet.

It registers its name and tags (``db/hosts.py``), so placements elsewhere may name it, and checks
the placements of its own ``worker.properties`` against the hosts the fleet knows: a
``worker.<type>.placement`` naming a host that never ran a daemon here, or a tag no such host
carries, stops the daemon with exit 6 naming the file, the key and the line. (The file seeds the
desired state of a new database; a placement that can match no host would run its type nowhere.)
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..config.problems import raise_all
from ..config.propfile import PropFile
from ..db.hosts import HostRegistry
from ..errors import ConfigError
from . import placement


def join_fleet(settings, dbs) -> HostRegistry:
    """Register this host, then check the file's placements; ``ConfigError`` if one names no
    known host. Returns the registry (the pinger renews this host's sighting through it)."""
    worker = settings.worker
    registry = HostRegistry(dbs.provisioning)
    registry.join(worker.host_name, worker.host_tags)
    known = dict(registry.known())
    known.setdefault(worker.host_name, worker.host_tags)
    raise_all(file_placement_problems(worker, known))
    return registry


def placement_problems_offline(settings, layout) -> list[ConfigError]:
    """``config check``'s share: the file's placements against the hosts the provisioning DB
    knows, when it can be read without changing anything (a database no daemon has prepared
    knows no host but this one). A database that cannot be reached is not judged: nothing is
    reported, as a daemon would refuse only once it is there to ask."""
    import sqlalchemy as sa

    from ..db.desired import missing_table
    from ..db.targets import Target, open_engine

    worker = settings.worker
    if not any(t.placement for t in worker.types):
        return []
    engine = open_engine(Target("admin", "provisioning.url", worker.provisioning_url.reveal()), layout,
                         create=False)
    try:
        try:
            known = dict(HostRegistry(engine).known())
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if not missing_table(exc):
                return []       # unreachable: cannot say
            known = {}          # no daemon prepared the database yet: no host is known
    finally:
        engine.dispose()
    known.setdefault(worker.host_name, worker.host_tags)
    return file_placement_problems(worker, known)


def file_placement_problems(worker, known: Mapping[str, Iterable[str]]) -> list[ConfigError]:
    """A problem for each ``worker.<type>.placement`` of the file that names no host of ``known``."""
    placed = [t for t in worker.types if t.placement]
    if not placed or worker.source is None:
        return []
    try:
        f = PropFile.read(worker.source)
    except ConfigError:
        f = None   # gone or unreadable since it was loaded: the message cannot give a line
    problems = []
    for t in placed:
        missing = placement.unknown(t.placement, known)
        if missing:
            key = f"worker.{t.name}.placement"
            problems.append(ConfigError(placement.describe_unknown(missing, known), file=worker.source,
                                        key=key, line=f.line(key) if f is not None else None))
    return problems
