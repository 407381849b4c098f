"""Desired state of the worker pools, kept in the provisioning DB: what the admin API edits and the
subscriber reconciles to.

``worker.properties`` says what a fresh install runs; once the admin daemon has started, the rows
here say it instead (``InstanceStore.ensure_seeded`` copies the file's worker types in once), so
an operator can add a worker type, move a queue or scale a pool without editing files on every
host, and every daemon, command and page of a fleet reads the same answer (``db/desired.py``).

The tables are in ``db/admin_schema.py`` (the Alembic chain "admin"); ``db/desired.py`` answers
"which worker types and queues exist" from them for every reader.

Every change is one transaction that reads what it checks under the write lock (BEGIN IMMEDIATE
on SQLite, ``FOR UPDATE`` on MySQL), so two operators cannot both pass a check that only one
of their changes may pass (e.g. deleting a queue while another makes an instance consume it);
one refused by a conflict (a Galera certification failure) is run again (``db/retry.py``).

Worker-type and queue names are identities: ``Tasks``, ``tasks`` and ``tasks `` are three names
on every database (``IdentityString``; a MySQL database of the hand-versioned admin schema 1,
whose default collation took them for one, is migrated by the chain's first revision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import sqlalchemy as sa

# MAX_PROCESSES: most processes one instance may ask for; from the one table of limits, so
# worker.properties and the admin API (which imports it from here) agree
from ..config.limits import MAX_PROCESSES
from ..config.settings import WorkerType
from ..errors import EnstratusError
from ..fleet import placement
from .admin_schema import (  # noqa: F401 - metadata: the chain's tables, for the migration tests
    declared_queues,
    instance_placement,
    instance_queues,
    instances,
    metadata,
    state,
)
from .jobs import now_ms
from .migrate import upgrade
from .retry import retried

SINCE_KEY = "jobs.stats.since_ms"
SEEDED_KEY = "instances.seeded_ms"


class AdminStoreError(EnstratusError):
    """A change to the desired state that cannot be made; nothing of it was written."""


class NotFound(AdminStoreError):
    """No such instance or queue."""


class Conflict(AdminStoreError):
    """The change contradicts what is stored (a second instance of a type, a consumed queue)."""


class Invalid(AdminStoreError):
    """The values themselves are wrong (min > max, a negative count)."""


@dataclass(frozen=True)
class Instance:
    """One worker type's desired pool."""

    id: int
    type: str
    queues: tuple[str, ...]
    min: int
    max: int
    enabled: bool
    created_ms: int
    updated_ms: int
    placement: tuple[str, ...] = ()    # fleet/placement.py: () is every host

    def worker_type(self) -> WorkerType:
        return WorkerType(self.type, self.queues, self.min, self.max, self.placement)

    def as_dict(self) -> dict:
        return {"id": self.id, "type": self.type, "queues": list(self.queues),
                "concurrency": {"min": self.min, "max": self.max}, "enabled": self.enabled,
                "placement": placement.shown(self.placement),
                "created_ms": self.created_ms, "updated_ms": self.updated_ms}


@dataclass(frozen=True)
class QueueEntry:
    name: str
    exchange: str | None
    routing_key: str | None
    created_ms: int


def check_bounds(low: int, high: int) -> None:
    """The rule for a pool's size, as worker.properties has it: 0 <= min <= max, 1 <= max."""
    if low < 0 or high < 0:
        raise Invalid(f"process counts must not be negative (min {low}, max {high})")
    if high < 1:
        raise Invalid("max must be at least 1 (disable the instance to run none)")
    if high > MAX_PROCESSES:
        raise Invalid(f"max must be at most {MAX_PROCESSES} (got {high})")
    if low > high:
        raise Invalid(f"min ({low}) must not be greater than max ({high})")


def _locked(q):
    return q.with_for_update()


class InstanceStore:
    """Reads and writes of the desired state. Safe to share between threads (pooled engine)."""

    def __init__(self, engine: sa.Engine, *, ensure: bool = True):
        self.engine = engine
        if ensure:
            upgrade(engine, "admin")

    # -- instances: reading --------------------------------------------------------------------
    def list(self, *, enabled_only: bool = False) -> list[Instance]:
        with self.engine.connect() as conn:
            return self._instances(conn, enabled_only=enabled_only)

    def get(self, instance_id: int) -> Instance:
        with self.engine.connect() as conn:
            return self._one(conn, instance_id)

    def by_type(self, type_name: str) -> Instance | None:
        with self.engine.connect() as conn:
            found = self._instances(conn, where=instances.c.type == type_name)
        return found[0] if found else None

    def consumers(self) -> dict[str, list[str]]:
        """``{queue: [types of the instances (enabled or not) consuming it]}``."""
        with self.engine.connect() as conn:
            return self._consumers(conn)

    @staticmethod
    def _consumers(conn) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        q = (sa.select(instance_queues.c.queue, instances.c.type)
             .join(instances, instance_queues.c.instance_id == instances.c.instance_id)
             .order_by(instance_queues.c.queue, instances.c.type))
        for queue, type_name in conn.execute(q):
            out.setdefault(queue, []).append(type_name)
        return out

    def _instances(self, conn, *, where=None, enabled_only: bool = False, lock: bool = False) -> list[Instance]:
        q = sa.select(instances).order_by(instances.c.instance_id)
        if where is not None:
            q = q.where(where)
        if enabled_only:
            q = q.where(instances.c.enabled.is_(True))
        rows = conn.execute(_locked(q) if lock else q).mappings().all()
        if not rows:
            return []
        ids = [r["instance_id"] for r in rows]
        links = _listed(conn, instance_queues.c.queue, ids)
        targets = _listed(conn, instance_placement.c.target, ids)
        return [Instance(id=r["instance_id"], type=r["type"], queues=tuple(links[r["instance_id"]]),
                         min=r["min_processes"], max=r["max_processes"], enabled=bool(r["enabled"]),
                         created_ms=r["created_ms"], updated_ms=r["updated_ms"],
                         placement=tuple(targets[r["instance_id"]])) for r in rows]

    def _one(self, conn, instance_id: int, *, lock: bool = False) -> Instance:
        found = self._instances(conn, where=instances.c.instance_id == instance_id, lock=lock)
        if not found:
            raise NotFound(f"no instance {instance_id}")
        return found[0]

    # -- instances: writing --------------------------------------------------------------------
    @retried()
    def create(self, type_name: str, queue_names: Sequence[str], low: int, high: int,
               enabled: bool = True, where: Sequence[str] = ()) -> Instance:
        """A new instance of a type not yet present, placed on ``where`` (``()``: every host);
        its queues are registered if they are new. The placement is the caller's to check
        against the known hosts (``fleet/placement.py``)."""
        check_bounds(low, high)
        names = _unique_queues(queue_names)
        now = now_ms()
        try:
            with self.engine.begin() as conn:
                if conn.execute(_locked(sa.select(instances.c.instance_id)
                                        .where(instances.c.type == type_name))).first():
                    raise Conflict(f"an instance of type '{type_name}' exists already")
                iid = conn.execute(instances.insert().values(
                    type=type_name, min_processes=low, max_processes=high, enabled=enabled,
                    created_ms=now, updated_ms=now)).inserted_primary_key[0]
                self._link(conn, iid, names, now)
                _place(conn, iid, where)
                return self._one(conn, iid)
        except sa.exc.IntegrityError:
            raise Conflict(f"an instance of type '{type_name}' exists already") from None

    @retried()
    def update(self, instance_id: int, *, low: int | None = None, high: int | None = None,
               enabled: bool | None = None) -> Instance:
        """Change the bounds and/or the enabled flag; the bounds are checked as a pair."""
        with self.engine.begin() as conn:
            current = self._one(conn, instance_id, lock=True)
            new_low = current.min if low is None else low
            new_high = current.max if high is None else high
            check_bounds(new_low, new_high)
            conn.execute(instances.update().where(instances.c.instance_id == instance_id).values(
                min_processes=new_low, max_processes=new_high,
                enabled=current.enabled if enabled is None else enabled, updated_ms=now_ms()))
            return self._one(conn, instance_id)

    @retried()
    def place(self, instance_id: int, where: Sequence[str]) -> Instance:
        """Run the instance on ``where`` (``()``: every host) from now on."""
        with self.engine.begin() as conn:
            self._one(conn, instance_id, lock=True)
            _place(conn, instance_id, where)
            conn.execute(instances.update().where(instances.c.instance_id == instance_id)
                         .values(updated_ms=now_ms()))
            return self._one(conn, instance_id)

    @retried()
    def scale_up(self, instance_id: int) -> Instance:
        """The status page's start button: enable a disabled instance, else one process more."""
        with self.engine.begin() as conn:
            current = self._one(conn, instance_id, lock=True)
            if not current.enabled:
                values = {"enabled": True}
            else:
                if current.max >= MAX_PROCESSES:
                    raise Conflict(f"'{current.type}' already runs the most processes allowed ({MAX_PROCESSES})")
                values = {"min_processes": current.min + 1, "max_processes": current.max + 1}
            conn.execute(instances.update().where(instances.c.instance_id == instance_id)
                         .values(**values, updated_ms=now_ms()))
            return self._one(conn, instance_id)

    @retried()
    def delete(self, instance_id: int) -> Instance:
        with self.engine.begin() as conn:
            gone = self._one(conn, instance_id, lock=True)
            conn.execute(instance_queues.delete().where(instance_queues.c.instance_id == instance_id))
            _place(conn, instance_id, ())
            conn.execute(instances.delete().where(instances.c.instance_id == instance_id))
            return gone

    @retried()
    def consume(self, instance_id: int, queue: str) -> Instance:
        """Add ``queue`` to what the instance consumes (registering the queue if new). Idempotent."""
        now = now_ms()
        with self.engine.begin() as conn:
            current = self._one(conn, instance_id, lock=True)
            if queue not in current.queues:
                last = conn.execute(sa.select(sa.func.max(instance_queues.c.position))
                                    .where(instance_queues.c.instance_id == instance_id)).scalar()
                self._link(conn, instance_id, [queue], now, start=(last or 0) + 1)
                conn.execute(instances.update().where(instances.c.instance_id == instance_id)
                             .values(updated_ms=now))
            return self._one(conn, instance_id)

    @retried()
    def cancel(self, instance_id: int, queue: str) -> Instance:
        """Stop consuming ``queue``; an instance keeps at least one queue."""
        with self.engine.begin() as conn:
            current = self._one(conn, instance_id, lock=True)
            if queue not in current.queues:
                raise NotFound(f"instance {instance_id} ('{current.type}') does not consume queue '{queue}'")
            if len(current.queues) == 1:
                raise Conflict(f"'{queue}' is the only queue of '{current.type}': an instance consumes "
                               "at least one queue (disable or delete the instance instead)")
            conn.execute(instance_queues.delete().where(instance_queues.c.instance_id == instance_id,
                                                        instance_queues.c.queue == queue))
            conn.execute(instances.update().where(instances.c.instance_id == instance_id)
                         .values(updated_ms=now_ms()))
            return self._one(conn, instance_id)

    def _link(self, conn, instance_id: int, names: Iterable[str], now: int, start: int = 0) -> None:
        for position, name in enumerate(names, start):
            known = conn.execute(sa.select(declared_queues.c.name).where(declared_queues.c.name == name)).first()
            if not known:
                conn.execute(declared_queues.insert().values(name=name, exchange=None, routing_key=None,
                                                             created_ms=now))
            conn.execute(instance_queues.insert().values(instance_id=instance_id, queue=name, position=position))

    # -- queues --------------------------------------------------------------------------------
    def queues(self) -> list[QueueEntry]:
        q = sa.select(declared_queues).order_by(declared_queues.c.name)
        with self.engine.connect() as conn:
            return [QueueEntry(**r) for r in conn.execute(q).mappings()]

    def queue(self, name: str) -> QueueEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(self._queue_row(name)).mappings().first()
        return QueueEntry(**row) if row else None

    @staticmethod
    def _queue_row(name: str):
        return sa.select(declared_queues).where(declared_queues.c.name == name)

    @retried()
    def add_queue(self, name: str, exchange: str | None = None,
                  routing_key: str | None = None) -> tuple[QueueEntry, bool]:
        """Register a queue; (entry, created). Declaring a known queue again is not an error, as
        on a broker."""
        try:
            with self.engine.begin() as conn:
                row = conn.execute(_locked(self._queue_row(name))).mappings().first()
                if row:
                    return QueueEntry(**row), False
                conn.execute(declared_queues.insert().values(name=name, exchange=exchange,
                                                             routing_key=routing_key, created_ms=now_ms()))
        except sa.exc.IntegrityError:  # declared by another request in between
            return self.queue(name), False
        return self.queue(name), True

    @retried()
    def remove_queue(self, name: str) -> QueueEntry:
        """Forget a queue no instance consumes (checked under the lock, so no consume can slip in)."""
        with self.engine.begin() as conn:
            row = conn.execute(_locked(self._queue_row(name))).mappings().first()
            if not row:
                raise NotFound(f"no queue '{name}'")
            users = self._consumers(conn).get(name)
            if users:
                raise Conflict(f"queue '{name}' is consumed by {', '.join(users)}: "
                               "cancel it on those instances first")
            conn.execute(declared_queues.delete().where(declared_queues.c.name == name))
            return QueueEntry(**row)

    # -- named values --------------------------------------------------------------------------
    def get_value(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(state.c.value).where(state.c.name == name)).scalar()

    @retried()
    def set_value(self, name: str, value: str) -> None:
        with self.engine.begin() as conn:
            if not conn.execute(state.update().where(state.c.name == name).values(value=value)).rowcount:
                conn.execute(state.insert().values(name=name, value=value))

    def stats_since(self) -> int:
        """When the job statistics were last reset (ms since the epoch; 0: never)."""
        value = self.get_value(SINCE_KEY)
        return int(value) if value else 0

    def reset_stats(self) -> int:
        since = now_ms()
        self.set_value(SINCE_KEY, str(since))
        return since

    # -- seeding -------------------------------------------------------------------------------
    @retried()
    def ensure_seeded(self, settings) -> bool:
        """Copy ``worker.properties``' worker types in, once: on the first start of an install.

        Done once (a marker row says so), not whenever the table is empty: an operator who
        deleted every instance meant it, and a restart must not bring them back. Safe when
        several processes start at once: the marker is written in the same transaction.
        """
        worker = getattr(settings, "worker", settings)
        now = now_ms()
        try:
            with self.engine.begin() as conn:
                marker = conn.execute(_locked(sa.select(state.c.value).where(state.c.name == SEEDED_KEY))).first()
                if marker or conn.execute(sa.select(instances.c.instance_id).limit(1)).first():
                    if not marker:
                        conn.execute(state.insert().values(name=SEEDED_KEY, value=str(now)))
                    return False
                conn.execute(state.insert().values(name=SEEDED_KEY, value=str(now)))
                for t in worker.types:
                    iid = conn.execute(instances.insert().values(
                        type=t.name, min_processes=t.min, max_processes=t.max, enabled=True,
                        created_ms=now, updated_ms=now)).inserted_primary_key[0]
                    self._link(conn, iid, t.queues, now)
                    _place(conn, iid, t.placement)
        except sa.exc.IntegrityError:
            return False  # another process seeded in between
        return True


def _unique_queues(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n in out:
            raise Invalid(f"queue '{n}' is listed twice")
        out.append(n)
    if not out:
        raise Invalid("an instance consumes at least one queue")
    return out


def _listed(conn, column, ids: list[int]) -> dict[int, list[str]]:
    """``{instance id: [column values in position order]}`` of a per-instance list table (its
    queues, its placement's targets) for the instances ``ids``."""
    table = column.table
    out: dict[int, list[str]] = {i: [] for i in ids}
    for iid, value in conn.execute(sa.select(table.c.instance_id, column).where(table.c.instance_id.in_(ids))
                                   .order_by(table.c.instance_id, table.c.position)):
        out[iid].append(value)
    return out


def _place(conn, instance_id: int, where: Sequence[str]) -> None:
    """Replace the instance's placement rows with the targets of ``where`` (none: every host)."""
    conn.execute(instance_placement.delete().where(instance_placement.c.instance_id == instance_id))
    for position, target in enumerate(placement.parse(list(where))):
        conn.execute(instance_placement.insert().values(instance_id=instance_id, target=target,
                                                        position=position))
