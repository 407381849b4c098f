"""The hosts of the fleet as every view shows them.

``known_hosts``: what a placement may name (every host registered in ``db/hosts.py``, and any
host with a heartbeat row), with its tags.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..db.hosts import HostRegistry


def known_hosts(dbs) -> dict[str, tuple[str, ...]]:
    """``{host name: its tags}`` of every host that ever ran a daemon against these databases:
    what a placement may name."""
    try:
        known = {k.name: k.tags for k in HostRegistry(dbs.provisioning).all()}
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        known = {}   # a database no daemon of this release prepared: heartbeats alone
    for hb in dbs.heartbeats.all():
        known.setdefault(hb.host, ())
    return known
