"""The analytics event of an attempt whose recorder died between its two writes.

When the outcomes and the events live in two databases, a recorder writes an attempt's outcome
(the job row) first and its event second, and acks the message only after both. A host killed
between the two leaves the row finished and no event; its unacked message is delivered again,
elsewhere, where the row check finds the attempt finished (a stale duplicate). Acked away as
such, the attempt would have no event for ever: the charts, totals and ``/metrics`` would miss it.

So a stale delivery of an attempt that the row says finished (succeeded, failed or dead, at the
delivery's attempt, recorded by another process) is first looked up in the events:

- its event is there (the common case: a duplicate publish): acked;
- it is missing and the process that recorded the row is dead (its heartbeat expired): the event
  is written here from the row, then the delivery is acked;
- it is missing and that process still lives: it may yet write it (its event write is waiting
  out an outage), so the delivery is held, unacked, and looked at again; after ``PATIENCE_S`` it
  is acked as it is, so a recorder that dropped an event (a refused write) holds nothing for ever.

An event written here can never be a second one of its attempt: it is written only when none is
recorded and its recorder is dead.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from enstratus_workers.db import Event
from enstratus_workers.errors import DatabaseError
from enstratus_workers.db.schema import EVENT_ERROR_MAX
from enstratus_workers.jobs.lifecycle import DEAD, FAILED, SUCCEEDED, event_outcome

log = logging.getLogger(__name__)

#: how long a stale delivery waits for a live recorder to write its attempt's event
PATIENCE_S = 120.0

_RECORDED = (SUCCEEDED, FAILED, DEAD)


def may_lack_event(row, attempt: int, me: str) -> bool:
    """Whether a stale delivery of ``attempt`` is of an attempt whose event may be missing:
    finished at that attempt by another process."""
    return row.status in _RECORDED and row.attempts == attempt and row.owner not in (None, me)


def owner_host(owner: str | None) -> str | None:
    """The host in an owner token (``name@host:pid:random``, daemon.py's ``_owner_token``)."""
    if not owner or "@" not in owner:
        return None
    return owner.rsplit(":", 2)[0].split("@", 1)[1] or None


class LostEvents:
    """Decides, for the stale deliveries that ``may_lack_event``, which to ack and which to hold."""

    def __init__(self, dbs, clock=time.monotonic):
        self.dbs, self.clock = dbs, clock
        self._waiting_since: dict[tuple[int, int], float] = {}   # attempts held for a live recorder
        self.written = 0

    def settle(self, candidates, live_owners) -> tuple[list, list]:
        """``candidates``: ``(delivery, message, row)``; ``live_owners()``: the live owner tokens.
        Returns (deliveries to ack, ``(delivery, message)`` to hold). Raises if a database cannot
        be read or written: the caller holds them all and checks again later."""
        pairs = {(m.job_id, m.attempt) for _, m, _ in candidates}
        have = self.dbs.events.recorded_attempts(pairs)
        missing = [(d, m, r) for d, m, r in candidates if (m.job_id, m.attempt) not in have]
        for key in have:
            self._waiting_since.pop(key, None)
        ack = [d for d, m, _ in candidates if (m.job_id, m.attempt) in have]
        if not missing:
            return ack, []
        live = live_owners()
        now = self.clock()
        # a held delivery may leave without coming back here (its consumer closed): forgotten
        for key in [k for k, t in self._waiting_since.items() if now - t > 2 * PATIENCE_S]:
            del self._waiting_since[key]
        orphans, hold = [], []
        for d, m, r in missing:
            key = (m.job_id, m.attempt)
            if r.owner not in live:
                orphans.append((d, m, r))
            elif now - self._waiting_since.setdefault(key, now) < PATIENCE_S:
                hold.append((d, m))
            else:
                log.warning("job %s attempt %s has no analytics event %.0f s after it was recorded by "
                            "%s, which still runs; acking its duplicate delivery without one",
                            m.job_id, m.attempt, PATIENCE_S, r.owner)
                self._waiting_since.pop(key, None)
                ack.append(d)
        if orphans:
            try:
                self._write(orphans)
                ack += [d for d, _, _ in orphans]
            except DatabaseError as exc:
                # an outage: held and tried again at the next look, for as long as it lasts. An
                # event the database refuses (its data) would be refused again: after the
                # patience, its delivery is acked without it rather than kept for ever
                refused = isinstance(exc.__cause__, (sa.exc.DataError, sa.exc.IntegrityError))
                log.warning("could not write the missing events of %d attempts (%s)", len(orphans), exc)
                for d, m, _r in orphans:
                    key = (m.job_id, m.attempt)
                    if not refused or now - self._waiting_since.setdefault(key, now) < PATIENCE_S:
                        hold.append((d, m))
                    else:
                        log.error("job %s attempt %s: its missing event is refused; gave it up", *key)
                        self._waiting_since.pop(key, None)
                        ack.append(d)
        return ack, hold

    def _write(self, orphans) -> None:
        events, seen = [], set()
        for _d, m, r in orphans:
            key = (m.job_id, m.attempt)
            if key in seen:
                continue
            seen.add(key)
            job = self.dbs.jobs.get(m.job_id)
            if job is None or job.status != r.status or job.attempts != m.attempt or job.end_timestamp is None:
                continue   # moved on since the check, or ended by recovery (no attempt ran to an end)
            start = job.start_timestamp if job.start_timestamp is not None else job.end_timestamp
            events.append(Event(job.job_id, job.action, job.queue, m.attempt, event_outcome(job.status),
                                max(0, job.end_timestamp - start), job.worker, job.end_timestamp,
                                error=job.error[:EVENT_ERROR_MAX] if job.error else None,
                                host=owner_host(r.owner)))
        if events:
            self.dbs.events.record(events)
            self.written += len(events)
        for key in seen:
            self._waiting_since.pop(key, None)
        if events:
            log.warning("wrote the analytics events of %d attempts whose recorder died between writing "
                        "their outcome and their event (jobs %s)", len(events),
                        ", ".join(str(e.job_id) for e in events[:10]))
