"""Writes what the subscriber must record before it may ack: running marks, outcomes, events.

It runs in its own thread, so the subscriber's loop keeps feeding the workers while a batch is
being written (a database round trip is milliseconds; a no-op action is microseconds).
Outcomes are written to the provisioning DB, then their events to the analytics DB, and only
then are their deliveries handed to ``on_recorded`` for acking. If a database cannot be
written, everything stays buffered (and unacked) and is retried with backoff: an outcome is
never acked unrecorded, and the status guard in ``JobStore.record_outcomes`` keeps a retried
write from counting twice.

Jobs are marked ``running`` only once they have run for ``mark_running_after`` seconds: a job
that ends sooner gets one write (its outcome, with its start time), not two.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .db import Databases, Event, Outcome, Started
from .mq.base import Delivery

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    outcome: Outcome
    event: Event
    deliveries: list[Delivery]
    dead_reason: str | None = None   # set: the job is dead; its message goes to the dead-letter queue


class Recorder:
    def __init__(self, dbs: Databases, batch: int, interval: float,
                 on_recorded: Callable[[list[Delivery]], None] | None = None,
                 mark_running_after: float = 1.0,
                 on_dead: Callable[[Delivery, str], None] | None = None):
        self.dbs = dbs
        self.batch, self.interval = batch, interval
        self.on_recorded = on_recorded
        self.on_dead = on_dead
        self.mark_running_after = mark_running_after
        self._lock = threading.Condition()
        self._started: dict[int, tuple[float, Started]] = {}
        self._outcomes: list[_Pending] = []     # not yet in the provisioning DB
        self._events: list[_Pending] = []       # in the provisioning DB, event not yet written
        self._oldest: float | None = None       # when the oldest unwritten outcome arrived
        self.retry_at = 0.0
        self.failures = 0
        self.recorded = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- feeding (any thread) ------------------------------------------------------------------
    def started(self, s: Started) -> None:
        with self._lock:
            if not self._started:
                self._lock.notify()
            self._started[s.job_id] = (time.monotonic(), s)

    def finished(self, outcome: Outcome, event: Event, deliveries: list[Delivery],
                 dead_reason: str | None = None) -> None:
        with self._lock:
            self._started.pop(outcome.job_id, None)   # the outcome row says it all
            self._outcomes.append(_Pending(outcome, event, list(deliveries), dead_reason))
            if self._oldest is None:   # the thread may be asleep with nothing due: set its alarm
                self._oldest = time.monotonic()
                self._lock.notify()
            elif len(self._outcomes) >= self.batch:
                self._lock.notify()

    @property
    def waiting(self) -> int:
        """Outcomes not yet acked: waiting to be written, or written with the event pending (RQ)."""
        with self._lock:
            return len(self._outcomes) + len(self._events)

    def due_in(self) -> float | None:
        """Seconds until a write is due (0: now), or None when there is nothing to write."""
        with self._lock:
            return self._due_in_locked()

    def _due_in_locked(self) -> float | None:
        now = time.monotonic()
        candidates = []
        if self._outcomes or self._events:
            full = len(self._outcomes) >= self.batch
            candidates.append(0.0 if full or self._oldest is None else self._oldest + self.interval - now)
        if self._started:
            first = min(t for t, _ in self._started.values())
            candidates.append(first + self.mark_running_after - now)
        if not candidates:
            return None
        due = max(0.0, min(candidates))
        return max(due, self.retry_at - now) if self.retry_at > now else due

    # -- writing -------------------------------------------------------------------------------
    def flush(self) -> list[Delivery]:
        """Write what is due; return the deliveries that may now be acked (also given to on_recorded)."""
        with self._lock:
            cutoff = time.monotonic() - self.mark_running_after
            marks = [s for t, s in self._started.values() if t <= cutoff]
            for s in marks:
                del self._started[s.job_id]
            outcomes, self._outcomes = self._outcomes, []
            events, self._events = self._events, []
            self._oldest = None
        written: list[_Pending] = []
        try:
            if marks:
                self.dbs.jobs.mark_started(marks)
                marks = []
            if outcomes:
                self.dbs.jobs.record_outcomes([p.outcome for p in outcomes])
                events, outcomes = events + outcomes, []
            if events:
                self.dbs.events.record([p.event for p in events])
                written, events = events, []
        except Exception as exc:  # DatabaseError, or SQLAlchemy's own from mark_started
            self._put_back(marks, outcomes, events)
            self.failures += 1
            delay = min(30.0, 0.5 * 2 ** min(self.failures, 6))
            self.retry_at = time.monotonic() + delay
            log.error("could not write to the database (%s); holding %d outcomes unacked, retrying in %.1fs",
                      exc, self.waiting, delay)
            return []
        if self.failures:
            log.info("database writes recovered after %d failed attempts", self.failures)
        self.failures, self.retry_at = 0, 0.0
        self.recorded += len(written)
        acks = [d for p in written for d in p.deliveries if p.dead_reason is None or self.on_dead is None]
        for p in written:
            if p.dead_reason is not None and self.on_dead is not None:
                for d in p.deliveries:
                    self.on_dead(d, p.dead_reason)
        if acks and self.on_recorded is not None:
            self.on_recorded(acks)
        return acks

    def _put_back(self, marks, outcomes, events) -> None:
        with self._lock:
            now = time.monotonic()
            for s in marks:
                self._started.setdefault(s.job_id, (now - self.mark_running_after, s))
            self._outcomes[:0] = outcomes
            self._events[:0] = events
            if self._outcomes or self._events:
                self._oldest = now

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                due = self._due_in_locked()
                if self._stopping and not (self._outcomes or self._events):
                    return
                if due is None or due > 0:
                    self._lock.wait(0.5 if due is None else due)
                    continue
            self.flush()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is left (retrying until ``timeout``), then end the thread."""
        with self._lock:
            self._stopping = True
            self.retry_at = 0.0
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
