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
before anything is given back (``settle``): the publisher reads the pauses with every pass,
and work it relays the moment an account is resumed must run, not bounce between the two until
this copy expires. If the pauses cannot be read, the last ones read stand; if a give-back cannot be written, its
deliveries stay unacked and it is tried again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from enstratus_workers.jobs.fairshare import Paused

log = logging.getLogger(__name__)

PAUSES_TTL_S = 1.0
RETRY_S = 1.0      # a give-back the database refused is tried again this much later


class PauseGate:
    """``read`` gives the pauses (``PauseStore.current``); ``give_back`` writes (job id, attempt)
    pairs back to the outbox (``JobStore.give_back``); ``ack`` acks deliveries (the intake's).

    The subscriber's loop asks ``holds`` of each checked delivery, hands those held to
    ``settle``, and calls ``tick`` every round (the sweep of waiting work, and retries)."""

    def __init__(self, read: Callable[[], Paused], give_back, ack, ttl: float = PAUSES_TTL_S):
        self._read, self._give_back, self._ack, self.ttl = read, give_back, ack, ttl
        self._paused = Paused()
        self._read_at = float("-inf")
        self._failing = False
        self._swept: Paused | None = None
        self._unwritten: list = []            # (delivery, job id, attempt) to write again
        self._retry_at = 0.0
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

    def settle(self, checked: list) -> list:
        """``checked``: (delivery, message, row) that ``holds`` held. Those a fresh read still
        holds go back to the outbox; returns those released since, to be run."""
        if not checked:
            return []
        paused = self.current(fresh=True)
        held = [c for c in checked if paused.holds(c[0].queue, c[2].account)]
        self._to_outbox([(d, msg.job_id, msg.attempt) for d, msg, _ in held])
        return [c for c in checked if not paused.holds(c[0].queue, c[2].account)]

    def tick(self, pending: dict, active: dict) -> None:
        """Once a round: write again what could not be written, and send back the work waiting
        for a worker (``pending``: worker type -> deque of assignments) of queues or accounts
        paused since the last look, with every delivery of it held in ``active``."""
        if self._unwritten and time.monotonic() >= self._retry_at:
            retry, self._unwritten = self._unwritten, []
            self._to_outbox(retry)
        paused = self.current()
        if paused == self._swept:
            return
        self._swept = paused
        for waiting in pending.values():
            taken = [a for a in waiting if paused.holds(a.task.queue, a.task.account)]
            if taken:
                keep = [a for a in waiting if not paused.holds(a.task.queue, a.task.account)]
                waiting.clear()
                waiting.extend(keep)
                self._to_outbox([(d, a.task.job_id, a.task.attempt) for a in taken
                                 for d in active.pop(a.task.key, [a.delivery])])

    def _to_outbox(self, items: list) -> None:
        """Make the jobs of ``items`` pending again, then ack their deliveries; if the database
        cannot be written, keep them (unacked) and try again a second later."""
        if not items:
            return
        try:
            self._give_back([(job_id, attempt) for _, job_id, attempt in items])
        except Exception as exc:
            log.warning("cannot give %d paused jobs back to the outbox (%s); trying again", len(items), exc)
            self._unwritten.extend(items)
            self._retry_at = time.monotonic() + RETRY_S
            return
        self._ack([d for d, _, _ in items])
        self.given_back += len(items)
        log.info("gave %d jobs of paused queues or accounts back to the outbox", len(items))
