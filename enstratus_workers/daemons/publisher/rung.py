"""Which job ring the publisher may publish from, without reading the job back from the outbox.

A job submitted alone comes with its ring (``jobs/wakeup.py``, ``Ringer.ring_job``): the job's
row as it was committed. Publishing it from the ring saves the relay pass's locked read, two
database round trips on every idle job's way from its submit to its start. What that read
decides is kept as ``db/outbox.py`` says ("a job handed over with its ring"): this module is the
publisher's side of it, the choice to use a ring or to make a pass as ever.

A ring is used only when all of these hold, else the wake-up makes an ordinary pass (which
relays the job too, locked):

- the wake-up brought exactly that ring, and no plain work ring: nothing else is known to wait;
- the pass before emptied the outbox (``FairShare.outbox_emptied``), so no older job waits its
  turn behind this one;
- the job is newer than every job this publisher has published: a ring that waited in the bell
  while a pass relayed its job is not used again;
- what this publisher last read of the job's queue window and pauses, for its queue and account,
  is younger than ``outbox.RUNG_FRESH_S``, and said neither is paused and at most one first
  attempt is queued there (read by the relay of the ring's job before, or by a lone pass).
"""

from __future__ import annotations

import time
from typing import Callable

from enstratus_workers.db import outbox
from enstratus_workers.db.outbox import Relayed, WindowView

#: views kept at most: one per (queue, account) met in the last second, pruned past this
MAX_VIEWS = 256


class RungJobs:
    """The publisher's memory for job rings: ``usable`` picks the one a wake-up may publish;
    ``published`` and ``saw`` keep what it needs to know for the next one."""

    def __init__(self, window: int | None, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self.newest = 0                       # the highest job id published by this publisher
        self.used = 0                         # jobs published from their rings
        self._views: dict[tuple[str, str | None], tuple[WindowView, float]] = {}

    def usable(self, payloads: list[bytes], plain: bool, outbox_emptied: bool) -> tuple[Relayed, str | None] | None:
        """The job to publish from the wake-up's job rings (``payloads``), and its account; None
        to make a pass (module docstring)."""
        if len(payloads) != 1 or plain or not outbox_emptied:
            return None
        rung = outbox.rung_job(payloads[0])
        if rung is None:
            return None
        job, account = rung
        if job.job_id <= self.newest:
            return None
        seen = self._views.get((job.queue, account))
        if seen is None or self.clock() - seen[1] > outbox.RUNG_FRESH_S:
            return None
        view = seen[0]
        if view.queue_paused or view.account_paused or view.queued > 1:
            return None
        if self.window is not None and view.queued >= self.window:
            return None
        return job, account

    def published(self, jobs: list[Relayed]) -> None:
        """Jobs the broker confirmed (from a pass or a ring)."""
        if jobs:
            self.newest = max(self.newest, max(j.job_id for j in jobs))

    def saw(self, queue: str, account: str | None, view: WindowView) -> None:
        """What a ring's relay or a lone pass read of this queue's window and pauses, just now."""
        now = self.clock()
        if len(self._views) >= MAX_VIEWS:
            self._views = {k: v for k, v in self._views.items() if now - v[1] <= outbox.RUNG_FRESH_S}
            if len(self._views) >= MAX_VIEWS:
                self._views.clear()
        self._views[(queue, account)] = (view, now)
