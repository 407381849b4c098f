"""The cloud API limits' budget in the provisioning DB: one row per (provider, account).

Why a row per key in the shared database: every worker process of every host must draw from
the same budget, and the provisioning DB is the one thing they all share (DESIGN: the fleet
keeps no state outside its engines). A "next free turn" row (``cloud/rate_policy.py``) needs one
short transaction per cloud call -- read the row under its lock (``SELECT ... FOR UPDATE`` on
MySQL/MariaDB; SQLite's write lock, taken at BEGIN), compute, write it back -- and never holds
the lock while anyone waits: the caller sleeps for its turn *after* the commit. So the lock is
held for two statements, whatever the rate, and processes asking at once are served one after
the other in about a millisecond each (``bench/cloud_turns.py`` measures it). A token bucket
would need the same one row and one transaction; the next free turn adds no burst, so no
provider's bucket sees more than the rate.

Every write runs under ``db/retry.py`` as idempotent: a turn taken twice after a commit lost on
the wire wastes one turn, it never lets a call through beyond the rate. On MySQL/MariaDB the
clock is the database server's, read in the statement that locks the row (``db/server_clock.py``):
with each host's own, a host whose clock ran an hour ahead set the key's next turn an hour off,
and every other host's calls on that key were deferred for that hour. A caller waits for its
turn by a duration (``Turn.wait_s``, ``Slowdown.resume_in_s``), never by an instant of the
server's clock. On SQLite (one host) it is this host's (``clock.now_us``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import sqlalchemy as sa

from ..clock import now_us
from ..cloud import rate_policy as rp
from .retry import retried
from .server_clock import db_now_us, server_now_us
from .schema import cloud_rates as R

T = TypeVar("T")
_STATE = ("next_us", "rate", "slowed_us", "eased_us")
_COUNTS = ("turns", "throttles", "deferrals")


@dataclass(frozen=True)
class KeyRow:
    """A key's row as the metrics read it: its state and its counts since it was first used."""

    provider: str
    account: str
    state: rp.KeyState
    turns: int
    throttles: int
    deferrals: int


@dataclass(frozen=True)
class KeyRate:
    """A key as an operator sees it: the rate it may make now beside its configured rate, and
    its calls, throttles and deferrals since it was first used."""

    provider: str
    account: str
    rate: float
    configured: float
    requests: int
    throttles: int
    deferrals: int

    @property
    def slowed(self) -> bool:
        return self.rate < self.configured


class CloudRateStore:
    """Turns and throttles of the fleet's cloud keys. Safe to share between threads."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @retried(idempotent=True)
    def take_turn(self, provider: str, account: str, policy: rp.Policy) -> rp.Turn:
        """A turn for one call on (provider, account), counted as a turn or a deferral."""
        def turn(state: rp.KeyState, now: int):
            answer, after = rp.take_turn(policy, state, now)
            return answer, after, ("turns" if answer.granted else "deferrals")
        return self._change(provider, account, turn)

    @retried(idempotent=True)
    def throttled(self, provider: str, account: str, policy: rp.Policy, asked_us: int,
                  retry_after_s: float = 0.0) -> rp.Slowdown:
        """Record a throttling answer to a call that asked for its turn at ``asked_us``."""
        def slow(state: rp.KeyState, now: int):
            answer, after = rp.throttled(policy, state, now, asked_us, retry_after_s)
            return answer, after, "throttles"
        return self._change(provider, account, slow)

    def _change(self, provider: str, account: str,
                change: Callable[[rp.KeyState, int], tuple[T, rp.KeyState, str]]) -> T:
        """Run ``change`` on the key's row under its lock, creating the row on first use."""
        key = (R.c.provider == provider, R.c.account == account)
        clock = db_now_us(self.engine.dialect.name)
        now_column = () if clock is None else (clock.label("now_us"),)   # read with the row it times
        for _ in range(2):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(sa.select(R, *now_column).where(*key).with_for_update()).mappings().first()
                    if row is None:
                        conn.execute(R.insert().values(provider=provider, account=account, next_us=0,
                                                       rate=None, slowed_us=0, eased_us=0,
                                                       **dict.fromkeys(_COUNTS, 0)))
                        row = {"next_us": 0, "rate": None, "slowed_us": 0, "eased_us": 0,
                               "now_us": server_now_us(conn)}
                    now = now_us() if clock is None else int(row["now_us"])
                    answer, after, counted = change(rp.KeyState(**{k: row[k] for k in _STATE}), now)
                    conn.execute(R.update().where(*key).values(
                        **{k: getattr(after, k) for k in _STATE}, **{counted: R.c[counted] + 1}))
                    return answer
            except sa.exc.IntegrityError:   # another process created the row first: lock it now
                continue
        raise AssertionError("the row was created and is gone again")   # pragma: no cover

    def rates(self, limits) -> list[KeyRate]:
        """Every key ever used, with its rate now under ``limits`` (``CloudLimitSettings``):
        recovery is counted up to now (the server's clock), so an idle key reads recovered
        without a write."""
        with self.engine.connect() as conn:
            now = server_now_us(conn)
        out = []
        for row in self.all():
            policy = rp.Policy.of(limits, row.provider, row.account)
            out.append(KeyRate(row.provider, row.account, policy.effective(policy.recovered(row.state, now)),
                               policy.rate, row.turns, row.throttles, row.deferrals))
        return out

    def all(self) -> list[KeyRow]:
        """Every key ever used, as its row holds it."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(R).order_by(R.c.provider, R.c.account)).mappings().all()
        return [KeyRow(r["provider"], r["account"], rp.KeyState(**{k: r[k] for k in _STATE}),
                       *(int(r[k]) for k in _COUNTS)) for r in rows]
