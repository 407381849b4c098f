"""Which worker types and queues exist: the one answer every daemon, command and page reads.

The desired state lives in the provisioning DB (``db/instances.py``, seeded once from
``worker.properties``), so a queue made through the admin API (``POST /queues``, ``POST
/instances``) is as real to ``submit``, the publisher's declares, ``pinger check``, the metrics,
the monitor, ``Stat`` and ``status`` as one written in the file, on every host of the fleet.

``read_desired`` reads it (seeding an install's new database from the file first, as every
reader may be the first to touch it); ``DesiredStateCache`` keeps the answer for about a second
where it is read on a hot path (a submit, a scrape) and reads again at once when asked about a
queue it does not know, so a queue added a moment ago is never refused. Readers that must work
with the database away (``pinger check``, the monitor) fall back to the file's queues.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import sqlalchemy as sa

from ..config.settings import WorkerSettings, WorkerType
from ..errors import DatabaseError
from .instances import Instance, InstanceStore
from .migrate import upgrade
from .retry import retried

log = logging.getLogger(__name__)

TTL_S = 1.0   # how stale a cached answer may be (a miss reads again at once)


@dataclass(frozen=True)
class DesiredState:
    """The worker types (every instance, enabled or not, in creation order) and the queues
    registered in the provisioning DB (declared ones, and every queue an instance consumes)."""

    instances: tuple[Instance, ...]
    declared: tuple[str, ...]
    # (settings, submit_settings(settings)) last made: every submit asks, the state lives a second
    _submit_memo: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def types(self) -> tuple[WorkerType, ...]:
        """The enabled worker types: what subscribers run (each on the hosts it is placed on)."""
        return tuple(i.worker_type() for i in self.instances if i.enabled)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue that exists: those the instances consume (in their order), then the
        declared ones no instance consumes (yet). What is declared, counted and shown."""
        return tuple(dict.fromkeys([*self.consumed, *self.declared]))

    @property
    def consumed(self) -> tuple[str, ...]:
        """The queues some instance consumes, enabled or not: what a job may be submitted to
        (a disabled instance's jobs wait for it; a queue nobody consumes would hold them for
        ever, so it is refused until an instance consumes it)."""
        return tuple(dict.fromkeys(q for i in self.instances for q in i.queues))

    def knows_queue(self, queue: str) -> bool:
        return queue in self.consumed

    def submit_settings(self, settings):
        """``settings`` with every instance's worker type (enabled or not), which ``submit``
        validates a job's queue against (the file's types while no instance exists)."""
        memo = self._submit_memo
        if memo is not None and memo[0] is settings:
            return memo[1]
        types = tuple(i.worker_type() for i in self.instances)
        made = replace(settings, worker=replace(settings.worker, types=types or settings.worker.types))
        object.__setattr__(self, "_submit_memo", (settings, made))   # frozen: a cache, not a value
        return made

    def types_on(self, host: str, tags: Iterable[str] = ()) -> tuple[WorkerType, ...]:
        """The enabled types placed on the host ``host`` carrying ``tags``."""
        from ..fleet.placement import runs_on

        tags = tuple(tags)
        return tuple(t for t in self.types if runs_on(t.placement, host, tags))

    def consumers(self) -> dict[str, list[str]]:
        """``{queue: [types of the instances consuming it, enabled or not]}``."""
        out: dict[str, list[str]] = {}
        for i in self.instances:
            for q in i.queues:
                out.setdefault(q, []).append(i.type)
        return out


@retried(idempotent=True)   # a read, and a seed that a marker row makes happen once
def read_desired(engine: sa.Engine, worker: WorkerSettings | None = None, *, prepare: bool = True) -> DesiredState:
    """The desired state as stored now. With ``worker`` (``worker.properties``), a database no
    daemon has seeded yet is seeded from it first, so the first reader of a new install sees
    what the file says rather than nothing; with ``prepare``, the tables are created (once) when
    missing (without, a missing table is the ``sqlalchemy`` error it is). Run again on a lost
    writer node, as every read of the stores is (``db/retry.py``)."""
    store = InstanceStore(engine, ensure=False)

    def read() -> DesiredState:
        if worker is not None:
            store.ensure_seeded(worker)
        return DesiredState(tuple(store.list()), tuple(q.name for q in store.queues()))
    try:
        return read()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if not prepare or not missing_table(exc):
            raise
        upgrade(engine, "admin")  # a database no daemon has prepared yet
        return read()


def missing_table(exc: sa.exc.DBAPIError) -> bool:
    """The error says a table does not exist (MySQL/MariaDB 1146, SQLite "no such table")."""
    code = getattr(exc.orig, "args", (None,))[0] if exc.orig is not None else None
    return code == 1146 or "no such table" in str(exc.orig or exc)


def desired_types(engine: sa.Engine, settings=None) -> list[WorkerType]:
    """The enabled worker types, in creation order (``settings``: seed a new database first)."""
    worker = None if settings is None else getattr(settings, "worker", settings)
    return list(read_desired(engine, worker).types)


class DesiredStateCache:
    """``read_desired`` kept for ``ttl_s`` (a second): one read per second however many
    submits, scrapes or page refreshes ask. Safe to share between threads."""

    def __init__(self, engine: sa.Engine, worker: WorkerSettings | None = None, ttl_s: float = TTL_S,
                 *, prepare: bool = True):
        self.engine, self.worker, self.ttl_s, self.prepare = engine, worker, ttl_s, prepare
        self._lock = threading.Lock()
        self._cached: tuple[float, DesiredState] | None = None
        self._seeded = False

    def get(self, fresh: bool = False) -> DesiredState:
        asked = time.monotonic()
        cached = self._cached
        if not fresh and cached is not None and asked - cached[0] < self.ttl_s:
            return cached[1]
        with self._lock:
            # Another thread may have read while this one waited for the lock: a burst of
            # threads at the expiry then makes one read, not one each. A fresh read is taken
            # only from a read that began after it was asked for (it saw every earlier change).
            cached = self._cached
            if cached is not None and (cached[0] >= asked if fresh else time.monotonic() - cached[0] < self.ttl_s):
                return cached[1]
            # seeding is looked at until it has been seen done once: after that, plain reads
            started = time.monotonic()   # the stamp is when the read began: it saw no later change
            state = read_desired(self.engine, None if self._seeded else self.worker, prepare=self.prepare)
            self._seeded = True
            self._cached = (started, state)
        return state

    def knowing(self, queue: str | None) -> DesiredState:
        """The state, read again at once if the cached one does not know ``queue`` (it may have
        been added a moment ago); whether the answer knows it is the caller's to check."""
        state = self.get()
        return state if queue is None or state.knows_queue(queue) else self.get(fresh=True)

    def queues(self, fallback: Sequence[str] = ()) -> tuple[str, ...]:
        """Every queue that exists, or ``fallback`` (the file's) when the database cannot be
        read (or holds none at all): for the readers that must go on showing something
        through an outage, or before any daemon prepared the database."""
        try:
            return self.get().queues or tuple(fallback)
        except (sa.exc.SQLAlchemyError, DatabaseError) as exc:
            log.debug("desired state unreadable (%s); using the configured queues", type(exc).__name__)
            return tuple(fallback)
