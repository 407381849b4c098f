"""A submitter that publishes its own jobs right after its commit, instead of ringing the relay.

The relay's way (``db/outbox.py``) is: the submitter commits the pending row and rings; a
publisher wakes, reads the row, publishes it, waits for the confirm and marks it queued. At idle
is most of what an idle job waits for before its message leaves (``bench/jobpath.py``). A
process whose jobs come one at a time (platform code that opts in; the admin daemon with
``direct_publish = true`` in admin.cfg) holds a ``DirectPublisher`` in its ``JobStore``
(``JobStore.publish_directly``), and then:

1. **In the insert's transaction** a job stored alone, while this process publishes at a low
   rate (``takes_more``), is claimed (``claimed_until_ms``) where the relay would have sent it at
   once anyway (``outbox.claimable``): nothing of its account unclaimed pending before it on its
   queue, room in the queue's window, neither the queue nor the account paused. Else it is
   inserted as always, and the publishers are rung.

   Why only then: a job published here costs the submitting process about 1.4 ms of CPU (the
   claim, the publish and its confirm, the mark), against the relay's fraction of that per job
   in its passes of many, in a process of its own. One job at a time it shortens the wait
   (bench/README.md, "Direct publishing"); under load the relay is the cheaper way.
2. **After the commit** the submitter publishes the claimed jobs (confirms on, the publisher's
   own messages) and marks the confirmed ones queued, where they are still pending.
3. **Whatever fails** (no broker, a nack, the mark) is left to the relay: the unconfirmed jobs'
   claims are released at once and the publishers rung; a submitter that dies between its commit
   and its publish leaves a claim that runs out after ``outbox.CLAIM_MS``, and the relay's next
   poll sends the job. A job is still in the database before any message, and a job published
   twice (the mark lost, the claim run out) is run once: the subscriber runs a delivery only
   for an open attempt.

A submit returns once its row is committed and its messages are handed to the broker
connection's own thread (``Transport.publish_begin``), as without direct publishing (an admin
API client gets its answer without waiting for the broker); the publisher's thread (``hand``)
waits for the confirms, and marks the confirmed queued, together with the jobs handed over
meanwhile, in one statement. The thread ends after ``IDLE_EXIT_S`` without work and is started
again by the next job (if the OS will not start it, the submitter waits for its confirms
itself). A process that ends without ``close()`` (which waits for what was handed over)
leaves the last jobs to the relay, after their claims.

A connection is opened on first use and dropped after any error (the next publish opens another).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Sequence

from enstratus_workers.errors import PublishError, TransportError
from enstratus_workers.jobs import pathtrace
from enstratus_workers.jobs.messages import encode_job
from enstratus_workers.mq.base import OutgoingMessage

log = logging.getLogger(__name__)

IDLE_EXIT_S = 5.0     # the thread ends after this long with nothing to publish
MAX_BATCH = 1000      # hand-overs settled together (one mark for all their jobs)
#: the rate up to which new jobs are published here (``takes_more``): 10 jobs per 100 ms
LOW_RATE_JOBS, LOW_RATE_WINDOW_S = 10, 0.1
CLOSE_WAIT_S = 10.0   # close() waits this long for what was handed over to be confirmed

#: ``settle(confirmed, left)``: called in the publisher's thread after a publish, with the ids
#: the broker confirmed and those it did not (``JobStore`` marks the first queued and hands the
#: rest back to the relay)
Settle = Callable[[list[int], list[int]], None]


class DirectPublisher:
    """``hand(jobs, settle)``: publish newly claimed jobs, then settle them.

    ``opener`` returns a new transport (``mq.open_transport``); ``window`` is the publishers'
    ``publisher.window`` (None: no window), which the claims respect as the relay does.
    """

    def __init__(self, opener: Callable[[], object], window: int | None):
        self.window = window
        self._opener = opener
        self._lock = threading.Lock()
        self._transport = None
        self._declared: set[str] = set()
        self.sent = 0          # jobs published and confirmed (for the curious and the tests)
        self.handed_back = 0   # claimed jobs left to the relay after a failure
        self._cv = threading.Condition()
        self._handed: list[tuple[Sequence, Settle, Callable[[], None]]] = []   # (jobs, settle, wait)
        self._running = False   # the thread is alive (or starting)
        self._busy = False      # it is waiting for or settling a batch taken from ``_handed``
        self._closing = False
        self._recent: collections.deque[tuple[float, int]] = collections.deque()   # (handed at, jobs)
        self._recent_jobs = 0

    @classmethod
    def for_settings(cls, settings, layout, client_name: str) -> "DirectPublisher":
        from enstratus_workers.mq import open_transport

        return cls(lambda: open_transport(settings.mq, layout, client_name=client_name),
                   settings.publisher.window)

    def hand(self, jobs: Sequence, settle: Settle) -> None:
        """Begin publishing ``jobs`` (``outbox.Relayed``: first attempts, due now) in the caller's
        thread; their confirms are waited for, and ``settle`` called, in this publisher's thread
        (module docstring). Never raises: what failed is the relay's."""
        if not jobs:
            return
        if self._closing:              # the process is on its way out: the relay's, now
            self._settle([(jobs, settle, None)], set())
            return
        with self._cv:
            self._recent.append((time.monotonic(), len(jobs)))
            self._recent_jobs += len(jobs)
        entry = (jobs, settle, self._begin(jobs))
        if entry[2] is None:           # not even begun: all of them are the relay's, now
            self._settle([entry], set())
            return
        with self._cv:
            if not self._closing:
                self._handed.append(entry)
                if self._running:
                    self._cv.notify()
                    return
                self._running = True
                try:
                    threading.Thread(target=self._run, name="direct-publisher", daemon=True).start()
                    return
                except RuntimeError:
                    # no thread now: the caller waits for its own confirms, and the next hand
                    # tries to start the thread again
                    self._running = False
                    self._handed.remove(entry)
        self._finish([entry])

    def _begin(self, jobs: Sequence) -> Callable[[], None] | None:
        """The waiter of the publish begun (``Transport.publish_begin``); None if it failed."""
        with self._lock:
            try:
                if self._transport is None:
                    self._transport = self._opener()
                    self._declared.clear()
                new = sorted({j.queue for j in jobs} - self._declared)
                if new:
                    self._transport.declare(new)
                    self._declared.update(new)
                return self._transport.publish_begin([
                    OutgoingMessage(queue=j.queue, message_id=str(j.job_id),
                                    body=encode_job(j.job_id, j.action, j.arguments, 1, j.max_attempts))
                    for j in jobs])
            except Exception as exc:  # noqa: BLE001 - a submit never fails for its publish: the relay is there
                (log.warning if isinstance(exc, (TransportError, OSError)) else log.exception)(
                    "direct publish failed (%s); %d job(s) left to the relay", exc, len(jobs))
                self._drop()
                return None

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._handed and not self._cv.wait_for(lambda: self._handed or self._closing, IDLE_EXIT_S):
                    self._running = False
                    self._cv.notify_all()
                    return
                if not self._handed:   # closing, nothing left
                    self._running = False
                    self._cv.notify_all()
                    return
                batch, self._handed = self._handed[:MAX_BATCH], self._handed[MAX_BATCH:]
                self._busy = True
            try:
                self._finish(batch)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _finish(self, batch: list) -> None:
        """Wait for each entry's confirms (they were in flight together), then settle them all."""
        confirmed: set[int] = set()
        failed = False
        for jobs, _settle, wait in batch:
            try:
                wait()
                confirmed.update(j.job_id for j in jobs)
            except PublishError as exc:
                unconfirmed = {str(i) for i in exc.unconfirmed}
                confirmed.update(j.job_id for j in jobs if str(j.job_id) not in unconfirmed)
                log.warning("direct publish: %s; left to the relay", exc)
                failed = True
            except Exception as exc:  # noqa: BLE001 - the connection went: the relay's
                log.warning("direct publish failed (%s); %d job(s) left to the relay", exc, len(jobs))
                failed = True
        if failed:
            with self._lock:
                self._drop()
        self._settle(batch, confirmed)

    def _settle(self, batch: list, confirmed: set[int]) -> None:
        outcomes: dict[Settle, tuple[list[int], list[int]]] = {}
        for jobs, settle, _wait in batch:
            ok, left = outcomes.setdefault(settle, ([], []))
            for j in jobs:
                (ok if j.job_id in confirmed else left).append(j.job_id)
        for settle, (ok, left) in outcomes.items():
            self.sent += len(ok)
            self.handed_back += len(left)
            pathtrace.stamp("direct.confirmed", ok)
            try:
                settle(ok, left)
            except Exception:  # noqa: BLE001 - the claims run out: the relay's safety net
                log.exception("settling %d directly published job(s) failed", len(ok) + len(left))

    def takes_more(self) -> bool:
        """Whether fewer than ``LOW_RATE_JOBS`` jobs were handed over in the last
        ``LOW_RATE_WINDOW_S``: the store claims a new job only then (``JobStore._insert``; module
        docstring, "Why only then")."""
        horizon = time.monotonic() - LOW_RATE_WINDOW_S
        with self._cv:
            recent = self._recent
            while recent and recent[0][0] < horizon:
                self._recent_jobs -= recent.popleft()[1]
            return self._recent_jobs < LOW_RATE_JOBS

    def drain(self, timeout: float) -> bool:
        """Wait until everything handed over was confirmed and settled; whether it was."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._handed and not self._busy, timeout)

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        self._declared.clear()
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing left to save
                log.debug("closing the direct publisher's transport failed", exc_info=True)

    def close(self) -> None:
        """Publish what was handed over (for up to ``CLOSE_WAIT_S``), end the thread, close the
        connection. Jobs still unpublished then are the relay's once their claims run out."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: not self._running, CLOSE_WAIT_S):
                log.warning("the direct publisher did not finish within %.0f s; the relay takes the rest",
                            CLOSE_WAIT_S)
        with self._lock:
            self._drop()

