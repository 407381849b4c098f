"""The arithmetic of the cloud API limits: a key's turns, and how a throttle slows it (AIMD).

A key is a (provider, account) pair; its budget is a *next free turn* (``next_us``): a call
takes the turn ``max(next_us, now)`` and moves it one interval (1 / rate) on. So calls are spaced
evenly at the key's rate however many processes ask, with no burst: a provider's own bucket
never sees more than the rate. A call whose turn is further off than ``max_wait_s`` does not
take it (its job is deferred instead, and comes back for a later one).

A throttling answer (HTTP 429, ``Retry-After``) halves the key's rate (multiplicative decrease,
never below one call a minute, ``FLOOR``) and pushes its next turn past the ``Retry-After``. Only
a call granted *after* the last slow-down may halve it again: the calls already on their way at
the old rate answer for that rate, and a burst of their 429s must not halve it to the floor. A
key with no throttle for ``recover_after_s`` steps back up by a tenth of its configured rate per
such quiet period (additive increase), up to the configured rate. Recovery is computed from the
row whenever it is read, so an idle key recovers without anyone writing it.

Pure functions of a ``KeyState`` (the row) and the time; ``db/cloud_rates.py`` reads and writes
the row around them in one short transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import MAX_DEFER_S

US = 1_000_000
DECREASE = 0.5     # a throttle halves the rate
STEP = 0.1         # each quiet period gives back this share of the configured rate
FLOOR = 1 / 60     # never slower than one call a minute (or the configured rate, if slower)


@dataclass(frozen=True)
class KeyState:
    """A key's row: its next free turn, its rate while slowed (None: as configured), and when
    it was last slowed and last stepped back up (µs since the epoch; 0: never)."""

    next_us: int = 0
    rate: float | None = None
    slowed_us: int = 0
    eased_us: int = 0


@dataclass(frozen=True)
class Turn:
    """A call's turn: ``granted`` at ``at_us`` (after ``wait_s``), or not, when the next free turn
    (``at_us``) is more than ``max_wait_s`` off; ``rate`` is the key's rate as it stands, and
    ``asked_us`` when the call asked (what a throttle of it is judged by: ``throttled``)."""

    granted: bool
    at_us: int
    wait_s: float
    rate: float
    asked_us: int


@dataclass(frozen=True)
class Slowdown:
    """What a throttle did to its key: ``halved`` or not (the call was granted before the last
    slow-down), the ``rate`` now, and when the key's next turn is free."""

    halved: bool
    rate: float
    resume_us: int
    resume_in_s: float   # how long after the throttle that is: what the caller waits


@dataclass(frozen=True)
class Policy:
    """The configured limits of one key (``config.settings.CloudLimitSettings``)."""

    rate: float              # requests per second, as configured
    max_wait_s: float        # longest wait a call takes; beyond it, its job is deferred
    recover_after_s: float   # quiet seconds before each step back up

    @classmethod
    def of(cls, limits, provider: str, account: str, patient: bool = False) -> "Policy":
        """The policy of (provider, account) under ``limits`` (``CloudLimitSettings``); a
        ``patient`` one (a compensation's) waits for its turn however long."""
        max_wait = float(MAX_DEFER_S) if patient else limits.max_wait
        return cls(limits.rate_for(provider, account), max_wait, limits.recover_after)

    @property
    def floor(self) -> float:
        return min(self.rate, FLOOR)

    def effective(self, state: KeyState) -> float:
        """The rate turns are spaced at: the slowed one, never above the configured one."""
        return self.rate if state.rate is None else min(state.rate, self.rate)

    def recovered(self, state: KeyState, now_us: int) -> KeyState:
        """``state`` with the steps back up that the quiet periods up to ``now_us`` earned."""
        if state.rate is None:
            return state
        if state.rate >= self.rate:   # configured slower since it was slowed: nothing to recover
            return replace(state, rate=None)
        period = int(self.recover_after_s * US)
        since = max(state.slowed_us, state.eased_us)
        steps = (now_us - since) // period if period > 0 else 0
        if steps <= 0:
            return state
        rate = state.rate + steps * STEP * self.rate
        return replace(state, rate=None if rate >= self.rate else rate, eased_us=since + steps * period)


def interval_us(rate: float) -> int:
    return max(1, round(US / rate))


def take_turn(policy: Policy, state: KeyState, now_us: int) -> tuple[Turn, KeyState]:
    """The turn of a call asking at ``now_us``, and the key's state after it."""
    state = policy.recovered(state, now_us)
    rate = policy.effective(state)
    at = max(state.next_us, now_us)
    wait_s = (at - now_us) / US
    if wait_s > policy.max_wait_s:
        return Turn(False, at, wait_s, rate, now_us), state
    return Turn(True, at, wait_s, rate, now_us), replace(state, next_us=at + interval_us(rate))


def throttled(policy: Policy, state: KeyState, now_us: int, asked_us: int,
              retry_after_s: float = 0.0) -> tuple[Slowdown, KeyState]:
    """A throttling answer at ``now_us`` to a call granted at ``asked_us`` (when it asked), with
    the provider's ``Retry-After`` (0: none): the slowdown, and the key's state after it."""
    state = policy.recovered(state, now_us)
    rate = policy.effective(state)
    halve = asked_us >= state.slowed_us
    if halve:
        rate = max(policy.floor, rate * DECREASE)
        state = replace(state, rate=rate, slowed_us=now_us)
    pause = int(retry_after_s * US) if retry_after_s > 0 else interval_us(rate)
    state = replace(state, next_us=max(state.next_us, now_us + pause))
    return Slowdown(halve, rate, state.next_us, (state.next_us - now_us) / US), state
