"""Heartbeats: each daemon's health as a row that expires (arq's health key, in the provisioning DB).

A daemon writes its row every few seconds with ``expires_ms`` a little beyond its next beat; a
reader treats an expired row as a dead daemon without anyone having to say so.

On MySQL/MariaDB the times of a beat are the database server's (``db/server_clock.py``), and
so is the time a reader judges them by (``Heartbeat.observed_ms``, read with the rows): a
fleet's hosts compare one clock. With each host's own, a publisher host whose clock ran an
hour ahead read every other host's heartbeat as expired, and put their running jobs back to run
again (``daemons/publisher/recovery.py``); a host an hour behind looked dead to the others. A
daemon's ``started_ms`` stays its own host's (it is shown, never compared). On SQLite there is
one host, whose clock is the database's.

A host's own clock still stamps what it shows (a job's created, start and end times), so each
beat also carries the writing host's clock (``HOST_CLOCK_KEY`` in its details): a reader sees
how far that host's clock is off the server's (``Heartbeat.clock_offset_ms``, ``clock_offsets``),
and ``pinger check`` warns of a host off by ``CLOCK_OFFSET_WARN_MS`` or more (a lost NTP sync).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import sqlalchemy as sa

from .jobs import now_ms
from .retry import retried
from .schema import heartbeats as H
from .server_clock import db_now_ms, now_ms_for


#: the key of a beat's details holding its host's own clock (ms) as it wrote the beat
HOST_CLOCK_KEY = "host_clock_ms"
#: a host's clock this far from the database server's, or more, is a problem to report
CLOCK_OFFSET_WARN_MS = 2000


@dataclass(frozen=True)
class Heartbeat:
    daemon: str
    name: str
    host: str
    pid: int
    started_ms: int
    beat_ms: int
    expires_ms: int
    status: str
    details: dict
    #: when the row was read, on the clock its times were written by (module docstring)
    observed_ms: int | None = None

    @property
    def seen_ms(self) -> int:
        """When the row was read, on its own clock (this host's now for a row made by hand)."""
        return now_ms() if self.observed_ms is None else self.observed_ms

    @property
    def expired(self) -> bool:
        return self.seen_ms > self.expires_ms

    @property
    def clock_offset_ms(self) -> int | None:
        """How far its host's clock was ahead of the one ``beat_ms`` is on (the database
        server's; negative: behind) when it wrote this beat; None for a row that does not say
        (written by hand, or by an older release). Within the write's round trip."""
        host = self.details.get(HOST_CLOCK_KEY) if isinstance(self.details, dict) else None
        if type(host) is not int:
            return None
        return host - self.beat_ms

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["expired"] = self.expired
        return d


class HeartbeatStore:
    """The heartbeat rows; ``host`` is this host's name (``host.name``), which the rows written
    here carry, so the daemons of several hosts (or install roots) on one database stay apart."""

    def __init__(self, engine: sa.Engine, host: str):
        self.engine = engine
        self.host = host

    @retried(idempotent=True)   # the row is set, not added to: writing it twice is writing it once
    def beat(self, daemon: str, name: str, *, ttl_s: float, status: str = "ok",
             details: dict | None = None, started_ms: int | None = None) -> None:
        beat = now_ms_for(self.engine)
        # this host's clock, beside the server's that the statement reads (on SQLite, the same)
        own = beat if isinstance(beat, int) else now_ms()
        key = dict(daemon=daemon, name=name, host=self.host)
        values = dict(pid=os.getpid(), beat_ms=beat, expires_ms=beat + int(ttl_s * 1000),
                      status=status, details=json.dumps({**(details or {}), HOST_CLOCK_KEY: own}, default=str),
                      started_ms=started_ms or own)
        with self.engine.begin() as conn:
            updated = conn.execute(H.update().where(*(H.c[k] == v for k, v in key.items()))
                                   .values(**values)).rowcount
            if not updated:
                conn.execute(H.insert().values(**key, **values))

    @retried(idempotent=True)
    def remove(self, daemon: str, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(H.delete().where(H.c.daemon == daemon, H.c.name == name,
                                          H.c.host == self.host))

    @retried(idempotent=True)
    def forget_host(self, host: str) -> int:
        """Delete every row of ``host`` (a host gone for good: ``DELETE /hosts/{name}``)."""
        with self.engine.begin() as conn:
            return conn.execute(H.delete().where(H.c.host == host)).rowcount

    def all(self) -> list[Heartbeat]:
        """Every row, each with the time it was read (``observed_ms``) on the clock of its times."""
        clock = db_now_ms(self.engine.dialect.name)
        q = sa.select(H, *(() if clock is None else (clock.label("observed_ms"),))).order_by(H.c.daemon, H.c.name)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        observed = now_ms() if clock is None else None
        return [Heartbeat(**{"observed_ms": observed, **r, "details": json.loads(r["details"] or "{}")})
                for r in rows]


def live_owners(heartbeats) -> set[str]:
    """The owner tokens of the subscriber processes whose heartbeat has not expired: only these
    may keep a running attempt (db/jobs.py's ownership rule); any other owner's may be taken."""
    return {hb.details.get("owner") for hb in heartbeats
            if hb.daemon == "subscriber" and not hb.expired and isinstance(hb.details, dict)} - {None}


def clock_note(offset_ms) -> str | None:
    """``clock 3600.0 s ahead of the database's`` for a host off by ``CLOCK_OFFSET_WARN_MS`` or
    more (the times it stamps on jobs are off by as much); None otherwise. The hosts' views and
    ``pinger check`` say it in these words."""
    if type(offset_ms) is not int or abs(offset_ms) < CLOCK_OFFSET_WARN_MS:
        return None
    return f"clock {abs(offset_ms) / 1000:.1f} s {'ahead of' if offset_ms > 0 else 'behind'} the database's"


def clock_offsets(beats) -> dict[str, int]:
    """Each host's clock offset (``Heartbeat.clock_offset_ms``) as its latest live beat that
    carries one says; hosts with none are left out."""
    latest: dict[str, Heartbeat] = {}
    for hb in beats:
        if hb.expired or hb.clock_offset_ms is None:
            continue
        if hb.host not in latest or hb.beat_ms > latest[hb.host].beat_ms:
            latest[hb.host] = hb
    return {host: hb.clock_offset_ms for host, hb in sorted(latest.items())}
