"""The pinger's retention round: prunes old jobs and events (``db/retention.py``), a batch a turn.

Why the pinger, not the publisher (whose stuck-job recovery is the other upkeep of the job
table): the publisher's loop is the outbox relay, on every job's path, and a pass of pruning
(thousands of DELETEs after a long stop) run in it would hold relaying up. The pinger's loop is
already a set of rounds on their own clocks, off every job's path, and any number of pingers
run one per host; the lease makes one of them prune at a time. Each turn here deletes one batch
and asks to be called again after ``PAUSE_S``, so the health round and the guests' heartbeats
wait at most one batch (milliseconds), and the database sees short transactions spaced out.

Dead letters are the one thing retention keeps outside the databases: each job that ended dead
left its message in its queue's dead-letter queue (on the broker, or in the embedded queue's
file). The pinger that finished a pass (the lease holder) then deletes those that died longer
than ``retention.dead`` ago, as it did their job rows, on the queue connection the pinger holds
for its health rounds (a pass a minute would otherwise open and close one a minute).
"""

from __future__ import annotations

import logging

from enstratus_workers.clock import now_ms
from enstratus_workers.db.retention import Periods, Pruner, lease_holder
from enstratus_workers.mq import open_transport
from enstratus_workers.mq.shared import SharedTransport

log = logging.getLogger(__name__)

#: pause between two batches of a pass: lets the recorder's and the relay's writes through
PAUSE_S = 0.05
#: most time between passes; a short retention (a soak's 60 s) is passed over more often
PASS_EVERY_S = 60.0
#: least time between passes, however short the retention
MIN_PASS_EVERY_S = 1.0


class RetentionRound:
    def __init__(self, settings, dbs, name: str, layout, broker: SharedTransport | None = None):
        self.settings, self.dbs, self.layout = settings, dbs, layout
        # the pinger's held connection; without it, one opened for each purge
        self.broker = broker
        self.periods = Periods.of(settings.pinger)
        shortest = self.periods.shortest()
        self.every_s = None if shortest is None else max(MIN_PASS_EVERY_S, min(PASS_EVERY_S, shortest / 2))
        self._passes_seen = 0
        self.dead_letters_purged = 0
        self.pruner = Pruner(dbs.provisioning, dbs.analytics, self.periods, lease_holder(f"pinger@{name}",
                                                                                    settings.worker.host_name))

    def turn(self) -> float | None:
        """One batch; the seconds until the next turn, or None when retention keeps everything."""
        if self.every_s is None:
            return None
        try:
            more = self.pruner.step()
        except Exception:  # a database away: the pass starts over next time, nothing is half-done
            log.exception("retention batch failed")
            self.pruner.abandon()
            return self.every_s
        if more:
            return PAUSE_S
        if self.pruner.passes != self._passes_seen:   # this pinger finished a pass just now
            self._passes_seen = self.pruner.passes
            self.purge_dead_letters()
        return self.every_s

    def purge_dead_letters(self) -> int:
        """Delete the dead letters of every queue that died ``retention.dead`` ago; how many."""
        if self.periods.dead <= 0:
            return 0
        before = now_ms() - int(self.periods.dead * 1000)
        purged = 0
        try:
            queues = self.dbs.desired.queues(self.settings.worker.all_queues)
            transport = self.broker or open_transport(self.settings.mq, self.layout, client_name="retention")
            try:
                for queue in queues:
                    purged += transport.purge_dead_before(queue, before)
            finally:
                if transport is not self.broker:
                    transport.close()
        except Exception as exc:  # noqa: BLE001 - the broker away: the next pass tries again
            log.warning("retention: could not purge old dead letters (%s: %s)", type(exc).__name__, exc)
        if purged:
            log.info("retention: purged %d dead letter(s) older than %g s", purged, self.periods.dead)
        self.dead_letters_purged += purged
        return purged

    def close(self) -> None:
        try:
            self.pruner.close()
        except Exception:
            log.debug("could not give the retention lease back", exc_info=True)
