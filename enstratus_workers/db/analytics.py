"""The analytics database: one event per attempt (job, action, outcome, duration, worker, time)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Sequence

import sqlalchemy as sa

from ..errors import DatabaseError
from .schema import events as E
from .schema import server_events as SE


@dataclass(frozen=True)
class Event:
    job_id: int
    action: str
    queue: str
    attempt: int
    outcome: str
    duration_ms: int
    worker: str | None
    event_timestamp: int


@dataclass(frozen=True)
class ServerEvent:
    """A server's state changed (launching -> running -> unreachable -> terminated ...)."""

    server_id: str
    account: str | None
    old_state: str | None
    new_state: str
    job_id: int | None
    action: str | None
    event_timestamp: int


_COLUMNS = [f.name for f in fields(Event)]


class EventStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def record(self, events: Sequence[Event]) -> None:
        """Insert the events in one multi-row INSERT (one transaction)."""
        if not events:
            return
        try:
            with self.engine.begin() as conn:
                # One multi-row INSERT through the driver: on the subscriber's hot path, building
                # a dict per row for SQLAlchemy's executemany costs more than the insert itself.
                mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
                row = "(" + ", ".join([mark] * len(_COLUMNS)) + ")"
                for chunk in (events[i:i + 500] for i in range(0, len(events), 500)):
                    conn.exec_driver_sql(
                        f"INSERT INTO enstratus_job_event ({', '.join(_COLUMNS)}) VALUES "
                        + ", ".join([row] * len(chunk)),
                        tuple(v for e in chunk for v in astuple(e)))
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseError(f"could not record {len(events)} events: {type(exc).__name__}") from exc

    def record_server_event(self, event: ServerEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(SE.insert().values(**event.__dict__))

    def server_events(self, server_id: str) -> list[ServerEvent]:
        q = sa.select(SE).where(SE.c.server_id == server_id).order_by(SE.c.event_id)
        with self.engine.connect() as conn:
            return [ServerEvent(**{k: v for k, v in r.items() if k != "event_id"})
                    for r in conn.execute(q).mappings()]

    def for_job(self, job_id: int) -> list[Event]:
        q = sa.select(E).where(E.c.job_id == job_id).order_by(E.c.event_id)
        with self.engine.connect() as conn:
            return [Event(**{k: v for k, v in r.items() if k != "event_id"}) for r in conn.execute(q).mappings()]

    def summary(self, since_ms: int = 0) -> dict[str, dict]:
        """Per action: count of attempts by outcome and mean duration since ``since_ms``."""
        q = (sa.select(E.c.action, E.c.outcome, sa.func.count(), sa.func.avg(E.c.duration_ms))
             .where(E.c.event_timestamp >= since_ms).group_by(E.c.action, E.c.outcome))
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for action, outcome, n, avg in conn.execute(q):
                a = out.setdefault(action, {"outcomes": {}, "mean_ms": {}})
                a["outcomes"][outcome] = int(n)
                a["mean_ms"][outcome] = float(avg or 0)
        return out
