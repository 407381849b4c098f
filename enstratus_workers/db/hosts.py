"""The hosts of the fleet: every host that ran a daemon against this database, with its tags.

Heartbeats say who is alive now and go when a daemon stops cleanly; a placement (``host:NAME``,
``tag:TAG``) may name a host that is stopped for maintenance. So each daemon registers its host
(``host.name``, ``host.tags``) when it starts (``join``), and the row stays: it is what a
placement may name, and it keeps a stopped host's last sighting (``last_seen_ms``, also renewed
by the pinger's rounds and a clean stop) for the hosts view. ``forget`` removes a host that is
gone for good (``DELETE /hosts/{name}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from ..clock import now_ms
from .admin_schema import hosts as H
from .retry import retried


@dataclass(frozen=True)
class KnownHost:
    name: str
    tags: tuple[str, ...]
    first_seen_ms: int
    last_seen_ms: int


def _tags(text: str) -> tuple[str, ...]:
    return tuple(t for t in text.split(",") if t)


class HostRegistry:
    """Reads and writes of ``enstratus_host``. Safe to share between threads."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @retried(idempotent=True)   # an upsert: writing it twice is writing it once
    def join(self, name: str, tags=(), now: int | None = None) -> None:
        """Register (or renew) this host with its current tags."""
        now = now or now_ms()
        values = {"tags": ",".join(tags), "last_seen_ms": now}
        for _ in range(2):   # a host's daemons start together: the second insert finds the row
            with self.engine.begin() as conn:
                if conn.execute(H.update().where(H.c.name == name).values(**values)).rowcount:
                    return
                try:
                    conn.execute(H.insert().values(name=name, first_seen_ms=now, **values))
                    return
                except sa.exc.IntegrityError:
                    pass

    @retried(idempotent=True)
    def touch(self, name: str, now: int | None = None) -> None:
        """This host was seen now (a pinger round, a clean stop)."""
        with self.engine.begin() as conn:
            conn.execute(H.update().where(H.c.name == name).values(last_seen_ms=now or now_ms()))

    @retried(idempotent=True)
    def all(self) -> list[KnownHost]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(H).order_by(H.c.name)).mappings().all()
        return [KnownHost(r["name"], _tags(r["tags"]), r["first_seen_ms"], r["last_seen_ms"]) for r in rows]

    def known(self) -> dict[str, tuple[str, ...]]:
        """``{host name: its tags}``: what a placement may name."""
        return {h.name: h.tags for h in self.all()}

    @retried(idempotent=True)
    def forget(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(H.delete().where(H.c.name == name)).rowcount)
