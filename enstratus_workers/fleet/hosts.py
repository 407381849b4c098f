"""The hosts of the fleet as every view shows them: ``GET /hosts``, the status page, ``status``
and ``monitor`` (each with ``--json``) all render ``fleet_view``.

A host is what its daemons' heartbeat rows (``db/heartbeats.py``) and its registry row
(``db/hosts.py``) say of it, read from the provisioning DB; no host is ever asked directly:

- **alive**: at least one of its daemons' heartbeats has not expired;
- **dead**: it has heartbeat rows and every one has expired (its daemons stopped beating
  without saying goodbye: killed, hung, the host down or cut off);
- **stopped**: no heartbeat rows (every daemon stopped cleanly and removed its own).

Per host: its daemons (subscriber, publisher, pinger, admin: pid, status, last beat, expired or
not), its worker processes (from its subscribers' heartbeats), its tags and its last heartbeat
(the newest beat of its rows, or the last sighting the registry kept).

A dead or stopped host is shown for ``FORGET_AFTER_S`` (a day) after its last heartbeat, so an
operator arriving the next morning still sees which host died in the night; then the views leave
it out and the pinger deletes its expired heartbeat rows (``forget_expired``). Its registry row
stays (a placement may still name it) until ``DELETE /hosts/{name}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from ..clock import now_ms
from ..db.desired import missing_table
from ..db.server_clock import now_ms_for
from ..db.heartbeats import clock_offsets
from ..db.hosts import HostRegistry, KnownHost
from ..db.retry import retried
from ..db.schema import heartbeats as H

ALIVE, DEAD, STOPPED = "alive", "dead", "stopped"
FORGET_AFTER_S = 24 * 3600
DAEMON_ORDER = ("subscriber", "publisher", "pinger", "admin")
#: worker states that count as on-line: alive and able to take (or holding) work
ONLINE = ("starting", "idle", "working")


@dataclass(frozen=True)
class HostView:
    name: str
    state: str
    last_heartbeat_ms: int | None
    tags: tuple[str, ...] = ()
    daemons: tuple[dict, ...] = ()
    workers: tuple[dict, ...] = ()
    first_seen_ms: int | None = None
    #: how far its clock is ahead of the database server's (negative: behind), as its latest
    #: live beat says (``db/heartbeats.py``); None while it has none
    clock_offset_ms: int | None = None

    @property
    def worker_processes(self) -> int:
        """Its worker processes on-line (the load that ``least_loaded`` compares)."""
        return sum(1 for w in self.workers if w["state"] in ONLINE)

    def as_dict(self) -> dict:
        return {"name": self.name, "state": self.state, "last_heartbeat_ms": self.last_heartbeat_ms,
                "tags": list(self.tags), "first_seen_ms": self.first_seen_ms,
                "daemons": [dict(d) for d in self.daemons], "workers": [dict(w) for w in self.workers],
                "worker_processes": self.worker_processes, "clock_offset_ms": self.clock_offset_ms}


@dataclass
class _Host:
    beats: list = field(default_factory=list)
    known: KnownHost | None = None


def _registry(dbs) -> list[KnownHost]:
    try:
        return HostRegistry(dbs.provisioning).all()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if not missing_table(exc):
            raise
        return []   # a database no daemon of this release prepared: heartbeats alone


def _daemon(hb) -> dict:
    return {"daemon": hb.daemon, "name": hb.name, "pid": hb.pid, "status": hb.status,
            "state": DEAD if hb.expired else ALIVE, "started_ms": hb.started_ms,
            "beat_ms": hb.beat_ms, "expires_ms": hb.expires_ms}


def _workers(hb) -> list[dict]:
    """The worker processes a live subscriber's heartbeat lists (a dead one's are gone)."""
    if hb.daemon != "subscriber" or hb.expired or not isinstance(hb.details, dict):
        return []
    return [{"subscriber": hb.name, "name": w.get("name"), "display": w.get("display"),
             "type": w.get("type"), "pid": w.get("pid"), "state": w.get("state") or "stopped"}
            for w in hb.details.get("workers") or [] if isinstance(w, dict)]


def fleet_view(dbs, now: int | None = None, *, forget_after_s: float = FORGET_AFTER_S) -> list[HostView]:
    """Every host the fleet shows, by name: alive ones, and dead or stopped ones for
    ``forget_after_s`` after their last heartbeat."""
    now = now or now_ms()
    hosts: dict[str, _Host] = {}
    for hb in dbs.heartbeats.all():
        hosts.setdefault(hb.host, _Host()).beats.append(hb)
    for known in _registry(dbs):
        hosts.setdefault(known.name, _Host()).known = known
    offsets = clock_offsets(b for h in hosts.values() for b in h.beats)
    out = []
    for name, h in sorted(hosts.items()):
        beats = sorted(h.beats, key=lambda b: (DAEMON_ORDER.index(b.daemon) if b.daemon in DAEMON_ORDER
                                               else len(DAEMON_ORDER), b.daemon, b.name))
        state = ALIVE if any(not b.expired for b in beats) else DEAD if beats else STOPPED
        seen = [b.beat_ms for b in beats] + ([h.known.last_seen_ms] if h.known else [])
        last = max(seen) if seen else None
        if state != ALIVE and last is not None and now - last > forget_after_s * 1000:
            continue
        out.append(HostView(name, state, last, h.known.tags if h.known else (),
                            tuple(_daemon(b) for b in beats), tuple(w for b in beats for w in _workers(b)),
                            h.known.first_seen_ms if h.known else None, offsets.get(name)))
    return out


def least_loaded(view: list[HostView], fallback: str) -> str:
    """Where an instance created without a placement goes (as the SCS agent placed one "on a
    random agent"): the live host with a live subscriber running the fewest worker processes,
    the first by name among equals; ``fallback`` (the asking admin daemon's own host) when no
    host has a live subscriber."""
    def has_subscriber(h: HostView) -> bool:
        return any(d["daemon"] == "subscriber" and d["state"] == ALIVE for d in h.daemons)

    candidates = [h for h in view if h.state == ALIVE and has_subscriber(h)]
    if not candidates:
        return fallback
    return min(candidates, key=lambda h: (h.worker_processes, h.name)).name


def running_by_type(view: list[HostView]) -> dict[str, list[dict]]:
    """``{worker type: [{"host", "processes": [worker dicts]}]}``: where each type runs now."""
    out: dict[str, dict[str, list]] = {}
    for h in view:
        for w in h.workers:
            out.setdefault(w["type"], {}).setdefault(h.name, []).append(
                {k: w[k] for k in ("name", "display", "pid", "state")})
    return {t: [{"host": host, "processes": procs} for host, procs in by_host.items()]
            for t, by_host in out.items()}


def known_hosts(dbs) -> dict[str, tuple[str, ...]]:
    """``{host name: its tags}`` of every host that ever ran a daemon against these databases:
    what a placement may name."""
    known = {k.name: k.tags for k in _registry(dbs)}
    for hb in dbs.heartbeats.all():
        known.setdefault(hb.host, ())
    return known


@retried(idempotent=True)
def forget_expired(engine: sa.Engine, now: int | None = None, forget_after_s: float = FORGET_AFTER_S) -> int:
    """Delete heartbeat rows expired more than ``forget_after_s`` ago (the pinger does this each
    round); returns how many went."""
    cutoff = now_ms_for(engine, now) - int(forget_after_s * 1000)   # on the rows' own clock
    with engine.begin() as conn:
        return conn.execute(H.delete().where(H.c.expires_ms < cutoff)).rowcount
