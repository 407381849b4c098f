"""A submitter that publishes its own jobs right after its commit, instead of ringing the relay.

The relay's way (``db/outbox.py``) is: the submitter commits the pending row and rings; a
publisher wakes, reads the row, publishes it, waits for the confirm and marks it queued. At idle
that is a third of a job's way from submit to action start (``bench/jobpath.py``). A process
that submits often (the admin daemon; platform code that opts in) holds a ``DirectPublisher``
in its ``JobStore`` (``JobStore.publish_directly``), and then:

1. **In the insert's transaction** the job is claimed (``claimed_until_ms``) where the relay
   would have sent it at once anyway (``outbox.claimable``): nothing unclaimed pending before it
   on its queue, room in the queue's window, neither the queue nor the account paused. Else it is
   inserted as always, and the publishers are rung.
2. **After the commit** the submitter publishes the claimed jobs (confirms on, the publisher's
   own messages) and marks the confirmed ones queued, where they are still pending.
3. **Whatever fails** (no broker, a nack, the mark) is left to the relay: the unconfirmed jobs'
   claims are released at once and the publishers rung; a submitter that dies between its commit
   and its publish leaves a claim that runs out after ``outbox.CLAIM_MS``, and the relay's next
   poll sends the job. A job is still in the database before any message, and a job published
   twice (the mark lost, the claim run out) is run once: the subscriber runs a delivery only
   for an open attempt.

A connection is opened on first use and dropped after any error (the next submit opens another),
one publish at a time: the store's callers may be many threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from enstratus_workers.errors import PublishError, TransportError
from enstratus_workers.jobs import pathtrace
from enstratus_workers.jobs.messages import encode_job
from enstratus_workers.mq.base import OutgoingMessage

log = logging.getLogger(__name__)


class DirectPublisher:
    """``send(jobs)``: publish newly claimed jobs; the ids the broker confirmed.

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

    @classmethod
    def for_settings(cls, settings, layout, client_name: str) -> "DirectPublisher":
        from enstratus_workers.mq import open_transport

        return cls(lambda: open_transport(settings.mq, layout, client_name=client_name),
                   settings.publisher.window)

    def send(self, jobs: Sequence) -> list[int]:
        """Publish ``jobs`` (``outbox.Relayed``: first attempts, due now) and wait for the
        broker's confirms; the ids confirmed. Never raises: what failed is the relay's."""
        if not jobs:
            return []
        with self._lock:
            try:
                if self._transport is None:
                    self._transport = self._opener()
                    self._declared.clear()
                new = sorted({j.queue for j in jobs} - self._declared)
                if new:
                    self._transport.declare(new)
                    self._declared.update(new)
                self._transport.publish([
                    OutgoingMessage(queue=j.queue, message_id=str(j.job_id),
                                    body=encode_job(j.job_id, j.action, j.arguments, 1, j.max_attempts))
                    for j in jobs])
                confirmed = [j.job_id for j in jobs]
            except PublishError as exc:
                unconfirmed = {str(i) for i in exc.unconfirmed}
                confirmed = [j.job_id for j in jobs if str(j.job_id) not in unconfirmed]
                log.warning("direct publish: %s; %d job(s) left to the relay", exc, len(jobs) - len(confirmed))
                self._drop()
            except (TransportError, OSError) as exc:
                log.warning("direct publish failed (%s); %d job(s) left to the relay", exc, len(jobs))
                confirmed = []
                self._drop()
            except Exception:  # noqa: BLE001 - a submit never fails for its publish: the relay is there
                log.exception("direct publish failed; %d job(s) left to the relay", len(jobs))
                confirmed = []
                self._drop()
        self.sent += len(confirmed)
        self.handed_back += len(jobs) - len(confirmed)
        pathtrace.stamp("direct.confirmed", confirmed)
        return confirmed

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        self._declared.clear()
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing left to save
                log.debug("closing the direct publisher's transport failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._drop()

