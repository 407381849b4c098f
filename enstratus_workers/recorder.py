"""Batches what the subscriber must write before it may ack: running marks, outcomes, events.

Outcomes are written to the provisioning DB, then their events to the analytics DB, and only
then are their deliveries handed back for acking. If a database cannot be written, everything
stays buffered (and unacked) and the next flush tries again: an outcome is never acked unrecorded,
and the status guard in ``JobStore.record_outcomes`` keeps a retried write from counting twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .db import Databases, Event, Outcome, Started
from .errors import DatabaseError
from .mq.base import Delivery

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    outcome: Outcome
    event: Event
    deliveries: list[Delivery]


class Recorder:
    def __init__(self, dbs: Databases, batch: int, interval: float):
        self.dbs = dbs
        self.batch, self.interval = batch, interval
        self._started: dict[int, Started] = {}
        self._outcomes: list[_Pending] = []     # not yet in the provisioning DB
        self._events: list[_Pending] = []       # in the provisioning DB, event not yet written
        self._oldest: float | None = None
        self.retry_at = 0.0
        self.failures = 0
        self.recorded = 0

    def started(self, s: Started) -> None:
        self._started[s.job_id] = s
        self._touch()

    def finished(self, outcome: Outcome, event: Event, deliveries: list[Delivery]) -> None:
        self._started.pop(outcome.job_id, None)   # the outcome row says it all
        self._outcomes.append(_Pending(outcome, event, list(deliveries)))
        self._touch()

    def _touch(self) -> None:
        if self._oldest is None:
            self._oldest = time.monotonic()

    @property
    def waiting(self) -> int:
        """Outcomes recorded or not whose messages are not acked yet (the monitor's RQ)."""
        return len(self._outcomes) + len(self._events)

    def due_in(self) -> float | None:
        """Seconds until a flush is due (0: now), or None when there is nothing to write."""
        if self._oldest is None:
            return None
        now = time.monotonic()
        if now < self.retry_at:
            return self.retry_at - now
        if len(self._outcomes) >= self.batch:
            return 0.0
        return max(0.0, self._oldest + self.interval - now)

    def flush(self) -> list[Delivery]:
        """Write what is buffered; return the deliveries that may now be acked."""
        try:
            if self._started:
                self.dbs.jobs.mark_started(list(self._started.values()))
                self._started.clear()
            if self._outcomes:
                batch = self._outcomes
                self.dbs.jobs.record_outcomes([p.outcome for p in batch])
                self._outcomes = []
                self._events.extend(batch)
            done = self._events
            if done:
                self.dbs.events.record([p.event for p in done])
                self._events = []
        except DatabaseError as exc:
            self.failures += 1
            delay = min(30.0, 0.5 * 2 ** min(self.failures, 6))
            self.retry_at = time.monotonic() + delay
            log.error("%s; holding %d outcomes unacked, retrying in %.1fs", exc, self.waiting, delay)
            return []
        except Exception:
            # SQLAlchemy raises its own errors for mark_started; same treatment.
            self.failures += 1
            self.retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(self.failures, 6))
            log.exception("could not write to the database; holding %d outcomes unacked", self.waiting)
            return []
        if self.failures:
            log.info("database writes recovered after %d failed attempts", self.failures)
        self.failures, self.retry_at = 0, 0.0
        self._oldest = None if not (self._started or self._outcomes or self._events) else time.monotonic()
        self.recorded += len(done)
        return [d for p in done for d in p.deliveries]
