"""The ``Stat`` API: one subscriber and its worker pool ("a cluster"), read from its heartbeat row.

Every subscriber writes its pool's picture into ``enstratus_heartbeat`` every two seconds (see
``Subscriber.snapshot``), so any process on any host that can read the provisioning DB can see
every cluster without talking to the daemons. This module only assembles figures; the terminal
monitor, ``status --json``, the status page and the metrics collector each render them their way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from ..config import load_settings
from ..db import Databases, Heartbeat, now_ms, open_databases
from ..layout import Layout
from ..mq import QueueDepth, Transport, open_transport

log = logging.getLogger(__name__)

SUBSCRIBER = "subscriber"
WORKER_STATES = ("starting", "idle", "working", "stopping", "stopped")
RUNNING, DEGRADED, DEAD, STOPPED = "running", "degraded", "dead", "stopped"

#: ``depths(queues) -> [QueueDepth]``: how a Stat learns queue depths (a transport, or a fake)
DepthsSource = Callable[[Sequence[str]], "list[QueueDepth]"]


def cluster_id_of(name: str, host: str) -> str:
    """``subscriber@<name>@<host>``: the daemon's pid-file name plus its host, unique in a fleet."""
    return f"{SUBSCRIBER}@{name}@{host}"


class TransportDepths:
    """A ``DepthsSource`` over the configured transport, kept open between calls.

    A monitor asks every second; reconnecting to RabbitMQ each time would be wasteful, so the
    transport stays open and is dropped (to be reopened on the next call) after any error.
    """

    def __init__(self, settings, layout, *, client_name: str = "stat"):
        self.settings, self.layout, self.client_name = settings, layout, client_name
        self._transport: Transport | None = None

    def __call__(self, queues: Sequence[str]) -> list[QueueDepth]:
        if self._transport is None:
            self._transport = open_transport(self.settings.mq, self.layout, client_name=self.client_name)
        try:
            return self._transport.depths(queues)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:  # closing a broken connection: nothing left to save
                log.debug("closing the transport failed", exc_info=True)


@dataclass(frozen=True)
class Stat:
    """One cluster: a subscriber (host + name) and its worker processes, as its last heartbeat says.

    ``status`` is ``dead`` once the heartbeat expired (the subscriber stopped beating without
    removing its row: killed, hung, or its host is gone); ``stopped`` while it reports it is
    shutting down (heartbeat status ``stopping``/``stopped``, or every worker ``stopping``);
    ``degraded`` when it reports trouble (not connected to the queue, a status other than ``ok``,
    a worker process down, or no worker at all); ``running`` otherwise.
    """

    name: str
    host: str
    pid: int
    started_ms: int
    beat_ms: int
    expires_ms: int
    heartbeat_status: str
    details: dict
    queues: tuple[str, ...] = ()
    observed_ms: int = field(default_factory=now_ms)
    depths_source: DepthsSource | None = field(default=None, repr=False, compare=False)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_heartbeat(cls, hb: Heartbeat, queues: Sequence[str] = (), *,
                       depths: DepthsSource | None = None, observed_ms: int | None = None) -> "Stat":
        return cls(name=hb.name, host=hb.host, pid=hb.pid, started_ms=hb.started_ms, beat_ms=hb.beat_ms,
                   expires_ms=hb.expires_ms, heartbeat_status=hb.status, details=dict(hb.details or {}),
                   queues=tuple(queues), observed_ms=hb.seen_ms if observed_ms is None else observed_ms,
                   depths_source=depths)

    @classmethod
    def get_all(cls, settings=None, layout=None, *, dbs: Databases | None = None,
                depths: DepthsSource | None = None) -> list["Stat"]:
        """Every cluster with a heartbeat row, sorted by host and name.

        ``settings``, ``layout``: the install to read (default: the one ``$ENSTRATUS_HOME`` names,
        else this checkout, as the CLI finds it; see ``install_of``).
        ``dbs``: open databases to read from (else they are opened and closed here).
        ``depths``: where ``empty_queues`` gets depths (default: the configured transport).
        Raises ``sqlalchemy.exc.SQLAlchemyError`` / ``DatabaseError`` if the DB cannot be read,
        ``ConfigError`` if the defaulted install's config is bad.
        """
        settings, layout = install_of(settings, layout)
        own = dbs is None
        if own:
            dbs = open_databases(settings.worker, layout, ensure=False)
        try:
            beats = [hb for hb in dbs.heartbeats.all() if hb.daemon == SUBSCRIBER]
            queues = dbs.desired.queues(settings.worker.all_queues)   # the one source of them
        finally:
            if own:
                dbs.close()
        if depths is None:
            depths = _one_shot_depths(settings, layout)
        # each row as read: on the database's clock, which its times are on (db/heartbeats.py)
        stats = [cls.from_heartbeat(hb, queues, depths=depths) for hb in beats]
        return sorted(stats, key=lambda s: (s.host, s.name))

    @classmethod
    def get(cls, cluster_id: str | int, settings=None, layout=None, *, dbs: Databases | None = None,
            depths: DepthsSource | None = None) -> "Stat | None":
        """The cluster with this id; a bare subscriber name works too when only one host has it,
        and so does the subscriber's pid (an ``int``, django-q's cluster id) when only one has it.
        ``settings`` and ``layout`` default as in ``get_all``."""
        stats = cls.get_all(settings, layout, dbs=dbs, depths=depths)
        if isinstance(cluster_id, int) and not isinstance(cluster_id, bool):
            by_pid = [s for s in stats if s.pid == cluster_id]
            return by_pid[0] if len(by_pid) == 1 else None
        exact = [s for s in stats if s.cluster_id == cluster_id]
        if exact:
            return exact[0]
        named = [s for s in stats if s.name == cluster_id]
        return named[0] if len(named) == 1 else None

    def __hash__(self):  # ``details`` is a dict: hash the identity of the beat instead
        return hash((self.cluster_id, self.beat_ms))

    # -- identity and life ---------------------------------------------------------------------
    @property
    def cluster_id(self) -> str:
        return cluster_id_of(self.name, self.host)

    @property
    def tob(self) -> datetime:
        """Time of birth: when the subscriber process started (UTC)."""
        return datetime.fromtimestamp(self.started_ms / 1000, timezone.utc)

    @property
    def expired(self) -> bool:
        return self.observed_ms > self.expires_ms

    def uptime(self) -> float:
        """Seconds since birth; for a dead cluster, how long it lived until its last beat."""
        end = self.beat_ms if self.expired else now_ms()
        return max(0.0, (end - self.started_ms) / 1000)

    def silent_for(self) -> float:
        """Seconds since the last heartbeat, as observed."""
        return max(0.0, (self.observed_ms - self.beat_ms) / 1000)

    @property
    def status(self) -> str:
        if self.expired:
            return DEAD
        states = [w.get("state") for w in self.worker_details]
        if self.heartbeat_status in ("stopping", "stopped") or (states and all(s == "stopping" for s in states)):
            return STOPPED
        if (self.heartbeat_status != "ok" or not self.details.get("connected", True)
                or not states or "stopped" in states):
            return DEGRADED
        return RUNNING

    # -- the pool ------------------------------------------------------------------------------
    @property
    def worker_details(self) -> list[dict]:
        """One dict per worker process: name, display, type, pid, state, inflight, tasks_done,
        reincarnations, uptime_s (as ``WorkerHandle.snapshot`` writes them)."""
        return [dict(w) for w in self.details.get("workers") or []]

    @property
    def workers(self) -> list[int]:
        """Pids of the worker processes (a worker between two lives has none and is left out)."""
        return [w["pid"] for w in self.worker_details if w.get("pid")]

    @property
    def reincarnations(self) -> int:
        return sum(int(w.get("reincarnations") or 0) for w in self.worker_details)

    def workers_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(WORKER_STATES, 0)
        for w in self.worker_details:
            counts[w.get("state", "stopped")] = counts.get(w.get("state", "stopped"), 0) + 1
        return counts

    @property
    def pending(self) -> dict[str, int]:
        """Per worker type: tasks received and waiting for a free worker."""
        return {k: int(v) for k, v in (self.details.get("pending") or {}).items()}

    @property
    def inflight(self) -> int:
        """Tasks handed to worker processes and not answered yet."""
        return int(self.details.get("inflight") or 0)

    @property
    def task_q_size(self) -> int:
        """TQ: tasks this cluster holds that are not done: waiting for a worker plus at a worker."""
        return sum(self.pending.values()) + self.inflight

    @property
    def done_q_size(self) -> int:
        """RQ: outcomes finished but not yet written to the DB and acked."""
        return int(self.details.get("recording") or 0)

    @property
    def stats(self) -> dict[str, int]:
        """Since the subscriber started: received, succeeded, failed, dead_lettered, duplicates."""
        return {k: int(v) for k, v in (self.details.get("stats") or {}).items()}

    @property
    def connected(self) -> bool:
        return bool(self.details.get("connected", False))

    # -- the queues ----------------------------------------------------------------------------
    def queue_depths(self) -> list[QueueDepth]:
        """Depths of the configured queues; raises ``TransportError`` if the queue cannot be asked."""
        if self.depths_source is None or not self.queues:
            return []
        return list(self.depths_source(self.queues))

    def empty_queues(self) -> list[str]:
        """The configured queues with nothing ready to deliver (their dead letters aside)."""
        return [d.queue for d in self.queue_depths() if d.ready == 0]

    def as_dict(self, *, with_queues: bool = False) -> dict:
        """JSON-ready figures; ``with_queues`` adds ``empty_queues`` (asks the transport)."""
        d = {
            "cluster_id": self.cluster_id, "name": self.name, "host": self.host, "pid": self.pid,
            "tob": self.tob.isoformat(), "uptime_s": round(self.uptime(), 1), "status": self.status,
            "heartbeat": {"status": self.heartbeat_status, "beat_ms": self.beat_ms,
                          "expires_ms": self.expires_ms, "expired": self.expired},
            "connected": self.connected, "reconnects": int(self.details.get("reconnects") or 0),
            "reincarnations": self.reincarnations, "task_q_size": self.task_q_size,
            "done_q_size": self.done_q_size, "pending": self.pending, "inflight": self.inflight,
            "stats": self.stats, "workers": self.workers, "workers_by_state": self.workers_by_state(),
            "worker_details": self.worker_details,
        }
        if with_queues:
            d["empty_queues"] = self.empty_queues()
        return d


def install_of(settings=None, layout=None):
    """``(settings, layout)`` of the install to read, each given one kept.

    Without a layout: the settings' own home, else ``$ENSTRATUS_HOME``, else the checkout (as
    ``Layout.from_env``, read at the call, not at import). Without settings: that install's
    files, loaded and validated as the daemons load them.
    """
    if layout is None:
        layout = Layout(settings.home) if settings is not None else Layout.from_env()
    if settings is None:
        settings = load_settings(layout)
    return settings, layout


def _one_shot_depths(settings, layout) -> DepthsSource:
    """A depths source that opens the transport for each call and closes it after."""
    def depths(queues: Sequence[str]) -> list[QueueDepth]:
        with open_transport(settings.mq, layout, client_name="stat") as transport:
            return transport.depths(queues)
    return depths
