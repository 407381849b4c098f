"""Stuck-job recovery, run by the publisher: jobs whose attempt or message was lost go back to the outbox.

A job is lost when:

- it is ``running`` and the subscriber process that owns the attempt no longer beats (no
  unexpired heartbeat carries its owner token): its host died, was cut off, or the process was
  killed. It is put back **as soon as the heartbeat expired** (every ``ORPHANS_EVERY_S``), not
  after the action's time limit: a dead host's jobs run again elsewhere within seconds;
- it is ``running`` without an owner (written by an older release) past its time limit plus the
  grace period, and no subscriber on the host that took it beats;
- it is ``queued`` for longer than ``QUEUED_AFTER_S`` while its queue holds nothing ready (so
  the message is not just waiting behind others).

Recovery makes it ``pending`` again, which the publisher relays as the next attempt (the lost
one counted) — or ``dead`` if it had its last (``lifecycle.after_lost``). A running job whose
cancel was requested is never retried: it goes back to the outbox only for a worker to run its
compensation, which ends it ``cancelled`` (``lifecycle.after_lost``); one without an owner goes
back once its host had the cancel's grace (``action.cancel_grace``) to stop it. Each change is guarded
by the status, timestamp and owner it saw (``JobStore.recover``), so with several publishers
(one per host) only one recovers a job, a job a subscriber has taken over meanwhile is left to
it, and an owner that was only cut off and comes back finds its late writes refused: it records
nothing over the newer attempt.

On MySQL/MariaDB expiry is judged on the database server's clock, which the owner's beats were
written by too (``db/heartbeats.py``): a host whose clock is off neither sees the others as dead
nor looks dead to them. (A Galera cluster's nodes must agree among themselves, as NTP keeps them.)
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
ORPHANS_EVERY_S = 2.0    # how often the running jobs of expired owners are looked for
QUEUED_AFTER_S = 600.0
RUNNING_SLACK_S = 60.0   # beyond time limit + grace, for clocks and heartbeat intervals


class StuckJobs:
    def __init__(self, settings, dbs: Databases, depths=None, every_s: float = SWEEP_EVERY_S,
                 orphans_every_s: float = ORPHANS_EVERY_S):
        self.settings, self.dbs = settings, dbs
        self.depths = depths               # callable(queues) -> list[QueueDepth], or None
        self.every_s, self.orphans_every_s = every_s, orphans_every_s
        self._next = time.monotonic() + every_s
        self._next_orphans = time.monotonic() + orphans_every_s
        self.recovered = 0

    def tick(self) -> int:
        """Look for what is due (the dead owners' jobs often, the rest every ``every_s``); cheap
        otherwise. Returns the jobs recovered."""
        now = time.monotonic()
        if now < self._next_orphans and now < self._next:
            return 0
        full = now >= self._next
        self._next_orphans = now + self.orphans_every_s
        if full:
            self._next = now + self.every_s
        try:
            n = self.sweep() if full else self.orphans()
        except Exception:  # the publisher's main job must not stop for a failed sweep
            log.exception("stuck-job sweep failed")
            return 0
        self.recovered += n
        return n

    def orphans(self) -> int:
        """Put back the running jobs whose owner's heartbeat expired (or is gone)."""
        candidates = self.dbs.jobs.running_not_owned_by(live_owners(self.dbs.heartbeats.all()))
        if not candidates:
            return 0
        # Read again after the jobs: a subscriber beats before it marks anything, so the owner
        # of every mark just read beats in this read unless it really is gone (one that started
        # between the first read and the query would otherwise look dead).
        live = live_owners(self.dbs.heartbeats.all())
        return sum(self._recover(job, f"lost: running on {job.worker or 'an unknown worker'}, whose "
                                      f"subscriber stopped beating (heartbeat expired){_cancel_note(job)}")
                   for job in candidates if job.owner not in live)

    def sweep(self, now: int | None = None) -> int:
        now = now or now_ms()
        recovered = self.orphans()
        # a running job without an owner (an older release's row) is stuck once its action's time
        # limit and a subscriber's stop window (the subscriber's grace period) are both over
        limit, grace = self.settings.worker.time_limit, self.settings.subscriber.grace_period
        beats = self.dbs.heartbeats.all()
        live_hosts = {hb.host for hb in beats if hb.daemon == "subscriber" and not hb.expired}
        running_deadline = now - int((limit + grace + RUNNING_SLACK_S) * 1000)
        running = self.dbs.jobs.stuck_running(running_deadline)
        cancelling = self.dbs.jobs.stuck_cancelling(
            now - int((self.settings.worker.cancel_grace + RUNNING_SLACK_S) * 1000))
        seen = {job.job_id for job in running}
        for job in running + [job for job in cancelling if job.job_id not in seen]:
            # a job with an owner is ``orphans``' (at once, when its owner is gone)
            if job.owner is None and _host_of(job.worker) not in live_hosts:
                worker = job.worker or "an unknown worker"
                recovered += self._recover(
                    job, f"stuck: running since {job.since_ms} on {worker}, whose subscriber is gone"
                         f"{_cancel_note(job)}")
        queued = self.dbs.jobs.stuck_queued(now - int(QUEUED_AFTER_S * 1000))
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


def _cancel_note(job: StuckAttempt) -> str:
    return "; cancel requested: compensating" if job.cancel_requested_ms is not None else ""


def _host_of(worker: str | None) -> str | None:
    """``default@web-3.2`` -> ``web-3``; the subscriber's host that took the job."""
    if not worker or "@" not in worker:
        return None
    host = worker.split("@", 1)[1]
    head, _, tail = host.rpartition(".")
    return head if tail.isdigit() and head else host
