"""Re-drive: give dead jobs another round of attempts. The one way in, for the CLI's ``dead retry``
and the admin API's ``POST /jobs/{id}/retry`` and ``POST /jobs/dead/retry``.

The job rows are the truth: they go back to ``pending`` with ``action.max_attempts`` attempts
more (``lifecycle.redrive_max_attempts``, in ``JobStore.requeue_dead``), and the publisher
relays them like any pending job. Their old dead letters are then purged from each queue's
dead-letter queue, where a later ``dead list`` would show them as strangers. The purge comes
second: if the queue cannot be reached, the jobs are re-driven all the same and the reason is
returned (their dead letters stay behind, harmless: they point at jobs that are no longer dead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import TransportError

log = logging.getLogger(__name__)

#: ``purge(queue, message_ids)``: a transport's ``purge_dead``
Purge = Callable[[str, Sequence[str]], int]


@dataclass(frozen=True)
class Redriven:
    """The jobs made pending again, as they were while dead; why their dead letters stayed, if
    they did."""

    jobs: list
    purge_error: str | None = None

    @property
    def job_ids(self) -> list[int]:
        return [j.job_id for j in self.jobs]


def redrive(job_store, purge: Purge, extra_attempts: int, job_ids: Sequence[int] | None = None) -> Redriven:
    """Re-drive the dead jobs among ``job_ids`` (every dead job when None); jobs that are not
    dead are left as they are. ``extra_attempts``: ``worker.max_attempts``."""
    jobs = job_store.requeue_dead(None if job_ids is None else list(job_ids), extra_attempts)
    try:
        for queue in sorted({j.queue for j in jobs}):
            purge(queue, [str(j.job_id) for j in jobs if j.queue == queue])
    except TransportError as exc:
        log.warning("re-drove %d job(s), but their dead letters stay: %s", len(jobs), exc)
        return Redriven(jobs, str(exc))
    return Redriven(jobs)
