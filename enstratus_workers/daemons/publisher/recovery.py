"""Stuck-job recovery, run by the publisher: jobs whose message was lost go back to the outbox.

A job is stuck when it is ``running`` past its time limit plus the grace period and the
subscriber process that owns the attempt no longer beats (no unexpired heartbeat carries its
owner token; for a row without an owner, written by an older release: no subscriber on the
host that took it beats), or ``queued`` for longer than ``QUEUED_AFTER_S`` while its queue
holds nothing ready (so the message is not just waiting behind others). Recovery makes it
``pending`` again, which the publisher relays as the next attempt — or ``dead`` if it had its
last (``lifecycle.after_lost``). Each change is guarded by the status, timestamp and owner it
saw (``JobStore.recover``), so with several publishers only one recovers a job, and a job a
subscriber has taken over meanwhile is left to it.

A running job whose cancel was requested is stuck sooner: once its owner had the cancel's grace
(``action.cancel_grace``) to stop it and is gone. It is never retried: it goes back to the
outbox only for a worker to run its compensation, which ends it ``cancelled``
(``lifecycle.after_lost``).
"""

from __future__ import annotations

import logging
import time

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Databases
from enstratus_workers.db.heartbeats import live_owners
from enstratus_workers.db.jobs import StuckAttempt

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 30.0
QUEUED_AFTER_S = 600.0
RUNNING_SLACK_S = 60.0   # beyond time limit + grace, for clocks and heartbeat intervals


class StuckJobs:
    def __init__(self, settings, dbs: Databases, depths=None, every_s: float = SWEEP_EVERY_S):
        self.settings, self.dbs = settings, dbs
        self.depths = depths               # callable(queues) -> list[QueueDepth], or None
        self.every_s = every_s
        self._next = time.monotonic() + every_s
        self.recovered = 0

    def tick(self) -> int:
        """Sweep if one is due; cheap otherwise. Returns the jobs recovered."""
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + self.every_s
        try:
            n = self.sweep()
        except Exception:  # the publisher's main job must not stop for a failed sweep
            log.exception("stuck-job sweep failed")
            return 0
        self.recovered += n
        return n

    def sweep(self, now: int | None = None) -> int:
        now = now or now_ms()
        # a running job is stuck once its action's time limit and a subscriber's stop window
        # (the subscriber's grace period) are both over
        limit, grace = self.settings.worker.time_limit, self.settings.subscriber.grace_period
        beats = self.dbs.heartbeats.all()
        live_hosts = {hb.host for hb in beats if hb.daemon == "subscriber" and not hb.expired}
        owners = live_owners(beats)
        running_deadline = now - int((limit + grace + RUNNING_SLACK_S) * 1000)
        running = self.dbs.jobs.stuck_running(running_deadline)
        cancelling = self.dbs.jobs.stuck_cancelling(
            now - int((self.settings.worker.cancel_grace + RUNNING_SLACK_S) * 1000))
        seen = {job.job_id for job in running}
        running += [job for job in cancelling if job.job_id not in seen]
        queued = self.dbs.jobs.stuck_queued(now - int(QUEUED_AFTER_S * 1000))
        recovered = 0
        for job in running:
            alive = job.owner in owners if job.owner else _host_of(job.worker) in live_hosts
            if not alive:
                worker = job.worker or "an unknown worker"
                cancel = "; cancel requested: compensating" if job.cancel_requested_ms is not None else ""
                recovered += self._recover(
                    job, f"stuck: running since {job.since_ms} on {worker}, whose subscriber is gone{cancel}")
        idle = self._idle_queues({job.queue for job in queued})
        for job in queued:
            if job.queue in idle:
                recovered += self._recover(job, f"stuck: queued since {job.since_ms}; message lost")
        return recovered

    def _idle_queues(self, queues: set[str]) -> set[str]:
        if not queues or self.depths is None:
            return set()
        return {d.queue for d in self.depths(sorted(queues)) if d.ready == 0}

    def _recover(self, job: StuckAttempt, why: str) -> int:
        new_status = self.dbs.jobs.recover(job, why)
        if new_status:
            log.warning("job %s %s -> %s", job.job_id, why, new_status)
        return int(new_status is not None)


def _host_of(worker: str | None) -> str | None:
    """``default@web-3.2`` -> ``web-3``; the subscriber's host that took the job."""
    if not worker or "@" not in worker:
        return None
    host = worker.split("@", 1)[1]
    head, _, tail = host.rpartition(".")
    return head if tail.isdigit() and head else host
