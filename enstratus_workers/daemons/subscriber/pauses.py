"""The subscriber's side of a pause: work of a paused queue or account goes back to the outbox.

The publisher relays nothing of a paused queue or account (``db/outbox.py``), but messages
already on the broker when the pause came are still delivered. Such a delivery, once checked
against its row, is not run: its job is made pending again at the same attempt count
(``JobStore.give_back``) and only then is the message acked, so nothing is lost and no attempt
is counted; the publisher relays the job again once it is resumed. Work taken before the pause
and still waiting here for a worker process goes back the same way (``sweep``); what a worker
has started finishes.

The pauses are read at most every ``PAUSES_TTL_S`` (one small query), so a pause takes effect
here within about that long on every host. What the last read says is paused is read again
before anything is given back (``confirmed``): the publisher reads the pauses with every pass,
and work it relays the moment an account is resumed must run, not bounce between the two until
this copy expires. If the pauses cannot be read, the last ones read stand.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from enstratus_workers.jobs.fairshare import Paused

log = logging.getLogger(__name__)

PAUSES_TTL_S = 1.0


class PauseGate:
    """``read`` gives the pauses (``PauseStore.current``); ``give_back`` writes jobs back to the
    outbox (``JobStore.give_back``); ``ack`` acks deliveries (the intake's)."""

    def __init__(self, read: Callable[[], Paused], give_back, ack, ttl: float = PAUSES_TTL_S):
        self._read, self._give_back, self._ack, self.ttl = read, give_back, ack, ttl
        self._paused = Paused()
        self._read_at = float("-inf")
        self._failing = False
        self._swept: Paused | None = None
        self.given_back = 0

    def current(self, fresh: bool = False) -> Paused:
        """The pauses as last read, read again if older than ``ttl`` (or if ``fresh``)."""
        now = time.monotonic()
        if fresh or now - self._read_at >= self.ttl:
            self._read_at = now
            try:
                paused = self._read()
            except Exception as exc:
                if not self._failing:
                    log.warning("cannot read the pauses (%s); keeping the last ones read", exc)
                self._failing = True
            else:
                if paused != self._paused:
                    log.info("paused: queues %s, accounts %s", sorted(paused.queues) or "none",
                             sorted(paused.accounts) or "none")
                self._paused, self._failing = paused, False
        return self._paused

    def holds(self, queue: str, account: str | None) -> bool:
        return self.current().holds(queue, account)

    def confirmed(self, items: list, where) -> tuple[list, list]:
        """``items`` the last read holds, split by a fresh read into those still held and those
        released since (``where(item)`` is its (queue, account))."""
        if not items:
            return [], []
        paused = self.current(fresh=True)
        held = [i for i in items if paused.holds(*where(i))]
        return held, [i for i in items if not paused.holds(*where(i))]

    def give_back(self, items: list) -> list:
        """``items``: (delivery, job id, attempt) of paused jobs. Their rows are made pending,
        then their deliveries acked; returns the items that could not be written (the database
        is away: the caller keeps them, unacked, and tries again)."""
        if not items:
            return []
        try:
            self._give_back([(job_id, attempt) for _, job_id, attempt in items])
        except Exception as exc:
            log.warning("cannot give %d paused jobs back to the outbox (%s); trying again", len(items), exc)
            return items
        self._ack([d for d, _, _ in items])
        self.given_back += len(items)
        log.info("gave %d jobs of paused queues or accounts back to the outbox", len(items))
        return []

    def sweep(self, pending: dict) -> list:
        """Take out of ``pending`` (worker type -> deque of assignments waiting for a worker) the
        assignments of queues or accounts paused since the last sweep; returns them."""
        paused = self.current()
        if paused == self._swept:
            return []
        self._swept = paused
        if not (paused.queues or paused.accounts):
            return []
        taken = []
        for waiting in pending.values():
            keep = [a for a in waiting if not paused.holds(a.task.queue, a.task.account)]
            if len(keep) != len(waiting):
                taken.extend(a for a in waiting if paused.holds(a.task.queue, a.task.account))
                waiting.clear()
                waiting.extend(keep)
        return taken
