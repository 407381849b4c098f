"""Cloud calls that wait for their turn: the fleet's budget per (provider, account), in the actions.

The worker process gives every action a ``CloudLimiter`` (``ctx.cloud_limits``), and
``drivers.open_driver`` wraps the account's libcloud driver in a ``LimitedDriver``: every
provider call of the cloud actions (list, create, destroy, reboot, firewall) first takes a turn
of its key from the shared budget (``db/cloud_rates.py``, arithmetic in ``rate_policy.py``):

- A turn free now or within ``cloud.max_wait`` (5 s by default): the call waits for it, in the
  worker, looking at ``ctx.cancelled()`` every 0.1 s; a cancel ends the wait (``errors.Cancelled``),
  so the action stops and its compensation runs.
- A turn further off: the job is put back (``errors.Deferred``, its attempt not counted) for
  about that long -- up to half again more, so a crowd of deferred jobs does not come back in
  step -- and the worker is free for other jobs. The bound keeps a worker from being held for a
  long wait; ``cloud.max_wait`` must stay below ``action.time_limit``, and a wait that long is
  already a sign the key is over-subscribed, which the outbox absorbs better than a blocked pool.
- A throttling answer (``throttling.py``): the key is slowed down for the whole fleet (halved, and
  paused for the ``Retry-After``), and the job put back for the ``Retry-After`` (without one: until
  the key's next turn, at least 1 s), its attempt not counted.

A compensation (``patient``) is neither deferred nor stopped by the cancel it answers: it waits
for its turn however long, and after a throttle waits and calls again (up to 5 tries).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import Callable

from ..config.settings import CloudLimitSettings
from ..errors import MAX_DEFER_S, Deferred
from ..runtime.on_first_use import OnFirstUse
from . import rate_policy as rp
from .throttling import throttle_of

log = logging.getLogger(__name__)

WAIT_SLICE_S = 0.1      # how often a waiting call looks at ctx.cancelled()
MIN_DEFER_S = 1.0       # shortest a job is put back for (below it, a wait would have done)
DEFER_SPREAD = 0.5      # a deferred job comes back after its wait times 1 to 1.5
PATIENT_TRIES = 5       # calls a compensation makes through throttles before it gives up


class CloudLimiter:
    """The cloud API limits of a worker process: the ``cloud.*`` settings and the shared budget.

    ``open_store`` makes the ``CloudRateStore`` on the first cloud call (a worker that runs no
    cloud action never connects for it)."""

    def __init__(self, settings: CloudLimitSettings, open_store: Callable[[], object]):
        self.settings = settings
        self._store = OnFirstUse(open_store)

    @property
    def store(self):
        return self._store.get()

    def limit(self, driver, provider: str, account: str, context, patient: bool = False) -> "LimitedDriver":
        """``driver`` with every call made in turn on (provider, account)."""
        return LimitedDriver(driver, KeyTurns(self, provider, str(account), context, patient))

    def close(self) -> None:
        self._store.drop(lambda store: store.engine.dispose())


class LimitedDriver:
    """A libcloud driver whose public methods each take a turn first; everything else (``type``,
    ``name``, ...) is the driver's own."""

    def __init__(self, driver, turns: "KeyTurns"):
        self._driver, self._turns = driver, turns

    def __getattr__(self, name: str):
        value = getattr(self._driver, name)
        if name.startswith("_") or not callable(value):
            return value
        return functools.partial(self._turns.call, value)


class KeyTurns:
    """The calls of one action on one key: wait for a turn, call, answer a throttle."""

    def __init__(self, limiter: CloudLimiter, provider: str, account: str, context, patient: bool):
        self.limiter, self.provider, self.account = limiter, provider, account
        self.context, self.patient = context, patient
        self.policy = rp.Policy.of(limiter.settings, provider, account, patient)

    @property
    def key(self) -> str:
        return f"{self.provider} account {self.account}"

    def call(self, fn, *args, **kwargs):
        for tries in range(1, PATIENT_TRIES + 1):
            asked = self._wait_for_turn()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                throttle = throttle_of(exc)
                if throttle is None:
                    raise
                delay = self._slow_down(asked, throttle, getattr(fn, "__name__", "call"))
                if not self.patient:
                    raise Deferred(delay, f"throttled by {self.key}: {throttle.reason}") from None
                if tries == PATIENT_TRIES:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")   # pragma: no cover

    def _wait_for_turn(self) -> int:
        """Take a turn and sleep until it; when the call asked. ``Deferred`` if it is too far off."""
        turn = self.limiter.store.take_turn(self.provider, self.account, self.policy)
        if not turn.granted:
            delay = min(float(MAX_DEFER_S), max(MIN_DEFER_S, turn.wait_s * (1 + DEFER_SPREAD * random.random())))
            raise Deferred(delay, f"cloud API limit of {self.key}: its next turn is in {turn.wait_s:.1f} s "
                                  f"(rate {turn.rate:g}/s, cloud.max_wait {self.policy.max_wait_s:g} s)")
        deadline = time.monotonic() + turn.wait_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.patient:
                self.context.stop_if_cancelled()
            time.sleep(min(WAIT_SLICE_S, left))
        return turn.asked_us

    def _slow_down(self, asked_us: int, throttle, what: str) -> float:
        """Record the throttle for the fleet; the seconds to wait before the key's next call."""
        slowed = self.limiter.store.throttled(self.provider, self.account, self.policy, asked_us,
                                              throttle.retry_after_s)
        # relative: the key's times are the database server's clock (db/cloud_rates.py), not this host's
        delay = throttle.retry_after_s or max(MIN_DEFER_S, slowed.resume_in_s)
        log.warning("cloud API limit: %s throttled %s (%s); rate %s %g/s, next call in %.1f s",
                    self.key, what, throttle.reason, "halved to" if slowed.halved else "stays at",
                    slowed.rate, delay)
        return delay
