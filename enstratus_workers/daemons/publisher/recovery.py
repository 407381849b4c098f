"""Stuck-job recovery, run by the publisher: jobs whose message was lost go back to the outbox.

A job is stuck when it is ``running`` past its time limit plus the grace period and the
subscriber process that owns the attempt no longer beats (no unexpired heartbeat carries its
owner token; for a row without an owner, written by an older release: no subscriber on the
host that took it beats), or ``queued`` for
longer than ``QUEUED_AFTER_S`` while its queue holds nothing ready (so the message is not just
waiting behind others). Recovery makes it ``pending`` again, which the publisher relays as the
next attempt — or ``dead`` if it had its last. Each change is guarded by the status,
timestamp and owner it saw, so with several publishers only one recovers a job, and a job a
subscriber has taken over meanwhile is left to it.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from enstratus_workers.db import Databases, now_ms
from enstratus_workers.db.heartbeats import live_owners
from enstratus_workers.db.schema import DEAD, PENDING, QUEUED, RUNNING
from enstratus_workers.db.schema import jobs as T

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
        w = self.settings.worker
        beats = self.dbs.heartbeats.all()
        live_hosts = {hb.host for hb in beats if hb.daemon == "subscriber" and not hb.expired}
        owners = live_owners(beats)
        running_deadline = now - int((w.time_limit + w.grace_period + RUNNING_SLACK_S) * 1000)
        queued_deadline = now - int(QUEUED_AFTER_S * 1000)
        with self.dbs.provisioning.connect() as conn:
            running = conn.execute(sa.select(T.c.job_id, T.c.worker, T.c.owner, T.c.start_timestamp,
                                             T.c.attempts, T.c.max_attempts).where(
                T.c.status == RUNNING, T.c.start_timestamp < running_deadline).limit(500)).all()
            queued = conn.execute(sa.select(T.c.job_id, T.c.queue, T.c.queued_timestamp, T.c.attempts,
                                            T.c.max_attempts).where(
                T.c.status == QUEUED, T.c.queued_timestamp < queued_deadline).limit(500)).all()
        recovered = 0
        for job_id, worker, owner, started, attempts, max_attempts in running:
            alive = owner in owners if owner else _host_of(worker) in live_hosts
            if alive:
                continue
            same_owner = T.c.owner.is_(None) if owner is None else T.c.owner == owner
            recovered += self._recover(job_id, RUNNING, T.c.start_timestamp, started, attempts, max_attempts,
                                       f"stuck: running since {started} on {worker or 'an unknown worker'}, "
                                       f"whose subscriber is gone", [same_owner])
        idle = self._idle_queues({q for _, q, *_ in queued})
        for job_id, queue, queued_at, attempts, max_attempts in queued:
            if queue in idle:
                recovered += self._recover(job_id, QUEUED, T.c.queued_timestamp, queued_at, attempts,
                                           max_attempts, f"stuck: queued since {queued_at}; message lost")
        return recovered

    def _idle_queues(self, queues: set[str]) -> set[str]:
        if not queues or self.depths is None:
            return set()
        return {d.queue for d in self.depths(sorted(queues)) if d.ready == 0}

    def _recover(self, job_id, status, stamp_column, stamp, attempts, max_attempts, why, guards=()) -> int:
        # the lost attempt counts: with none left the job is dead, else the outbox relays it again
        # (pending at the lost attempt closes it: its owner, should it wake, can write nothing)
        new_status = DEAD if attempts >= max_attempts else PENDING
        with self.dbs.provisioning.begin() as conn:
            changed = conn.execute(T.update().where(
                T.c.job_id == job_id, T.c.status == status, stamp_column == stamp, *guards).values(
                status=new_status, error=why, attempts=max(attempts, 1), owner=None)).rowcount
        if changed:
            log.warning("job %s %s -> %s", job_id, why, new_status)
        return changed


def _host_of(worker: str | None) -> str | None:
    """``default@web-3.2`` -> ``web-3``; the subscriber's host that took the job."""
    if not worker or "@" not in worker:
        return None
    host = worker.split("@", 1)[1]
    head, _, tail = host.rpartition(".")
    return head if tail.isdigit() and head else host
