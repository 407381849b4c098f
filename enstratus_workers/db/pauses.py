"""Pauses, fleet-wide: queues and accounts whose jobs wait in the outbox until resumed.

One row per paused queue or account in ``enstratus_pause`` (provisioning DB), so every host's
publisher and subscriber obey the same pauses and they survive restarts. The publisher reads
them with every relay pass (``db/outbox.py``) and relays none of their jobs; the subscriber
reads them at most every ``PAUSES_TTL_S`` and gives a delivery of a paused job back to the
outbox (``JobStore.give_back``: pending again at the same attempt count, its message acked):
nothing is lost and no attempt is counted. Resuming deletes the row; the publisher relays the
jobs at its next pass (resume rings this host's publishers; others find it within their poll).

Names are checked here, at the one door every caller comes through: an account must be a valid
account name (``limits.ACCOUNT_RULE``: ``Invalid``), a queue must be one the fleet has (the
desired state's queues, declared or consumed: ``db/desired.py``; else ``NotFound``). A queue
that was paused and then forgotten can still be resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from ..clock import now_ms
from ..config import limits
from ..jobs.fairshare import Paused
from .instances import Invalid, NotFound
from .schema import pauses as T

QUEUE, ACCOUNT = "queue", "account"
KINDS = (QUEUE, ACCOUNT)


@dataclass(frozen=True)
class Pause:
    """A queue or an account, paused since ``since_ms`` (``paused`` false: not paused, and
    ``since_ms`` None)."""

    kind: str
    name: str
    paused: bool
    since_ms: int | None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "paused": self.paused, "since_ms": self.since_ms}


def _shown(name: str) -> str:
    return ascii(name if len(name) <= 60 else name[:57] + "...")


class PauseStore:
    """Reads and writes of the pauses. ``known_queue(name)`` says whether the fleet has a queue
    (the desired state's declared queues); ``on_resume`` is called after a resume's commit (it
    rings this host's publishers)."""

    def __init__(self, engine: sa.Engine, known_queue: Callable[[str], bool],
                 on_resume: Callable[[], None] | None = None):
        self.engine = engine
        self.known_queue = known_queue
        self._on_resume = on_resume or (lambda: None)

    def check(self, kind: str, name: str) -> None:
        """``Invalid`` for a name no queue or account can have; ``NotFound`` for an unknown queue."""
        if kind == ACCOUNT:
            if not limits.valid_account(name):
                raise Invalid(f"invalid account name {_shown(str(name))}: use {limits.ACCOUNT_RULE}")
        elif kind == QUEUE:
            if not isinstance(name, str) or not limits.QUEUE_NAME.fullmatch(name):
                raise Invalid(f"invalid queue name {_shown(str(name))}: use {limits.QUEUE_RULE}")
            if not self.known_queue(name):
                raise NotFound(f"no queue {_shown(name)}")
        else:
            raise ValueError(f"a pause is of a queue or an account, not {kind!r}")

    def pause(self, kind: str, name: str) -> Pause:
        """Pause it (again: a no-op that keeps the first ``since_ms``)."""
        self.check(kind, name)
        try:
            with self.engine.begin() as conn:
                since = self._since(conn, kind, name)
                if since is None:
                    since = now_ms()
                    conn.execute(T.insert().values(kind=kind, name=name, since_ms=since))
        except sa.exc.IntegrityError:     # paused by another request in between: theirs stands
            return self.get(kind, name)
        return Pause(kind, name, True, since)

    def resume(self, kind: str, name: str) -> Pause:
        """Lift its pause (of one not paused: a no-op). A queue forgotten since it was paused
        may be resumed; an unknown queue that is not paused is ``NotFound``."""
        try:
            self.check(kind, name)
        except NotFound:
            if not self.get(kind, name).paused:
                raise
        with self.engine.begin() as conn:
            lifted = conn.execute(T.delete().where(T.c.kind == kind, T.c.name == name)).rowcount
        if lifted:
            self._on_resume()
        return Pause(kind, name, False, None)

    def get(self, kind: str, name: str) -> Pause:
        with self.engine.connect() as conn:
            since = self._since(conn, kind, name)
        return Pause(kind, name, since is not None, since)

    def list(self) -> list[Pause]:
        """Every pause, queues first, each kind by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(T.c.kind, T.c.name, T.c.since_ms)
                                .order_by(T.c.kind.desc(), T.c.name)).all()
        return [Pause(k, n, True, s) for k, n, s in rows]

    def current(self) -> Paused:
        """The pauses as one value (the subscriber's check)."""
        found: dict[str, set[str]] = {QUEUE: set(), ACCOUNT: set()}
        for p in self.list():
            found.setdefault(p.kind, set()).add(p.name)
        return Paused(frozenset(found[QUEUE]), frozenset(found[ACCOUNT]))

    @staticmethod
    def _since(conn, kind: str, name: str) -> int | None:
        return conn.execute(sa.select(T.c.since_ms).where(T.c.kind == kind, T.c.name == name)).scalar()


def fleet_pauses(dbs) -> PauseStore:
    """The pauses of the fleet whose databases are ``dbs``: a queue is known if the desired
    state has it (read again at once when the cached answer does not: it may be a moment
    old); a resume wakes this host's publishers."""
    def known(name: str) -> bool:
        return name in dbs.desired.get().queues or name in dbs.desired.get(fresh=True).queues
    return PauseStore(dbs.provisioning, known_queue=known, on_resume=dbs.jobs.wake_publishers)
