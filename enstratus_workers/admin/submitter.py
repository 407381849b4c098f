"""The admin API's single submits (``POST /jobs`` with one job, no idempotency key), stored by
one thread: whatever arrived while it wrote goes into its next transaction.

Served the usual way, each such request took a thread of the pool, and those threads met in
``JobStore.submit``'s group commit: under load the daemon's event loop handed every request to
a thread and back, and eight or more threads woke one another for every group. Here the event
loop parses and checks the body (pure CPU: no database), then queues the job and awaits a
future; the one submitter thread takes everything queued, validates it against the desired
state (which may read the database, so never on the loop), stores the valid jobs in one
transaction (``JobStore.submit_jobs``: their rows committed, the publishers rung, before any
answer) and settles the whole batch with one call into the loop. A lone request is written at
once: nothing waits for a timer, and the batch grows with the load.

One bad job never fails the others: a job the desired state refuses gets its own 422, and a
failed transaction is written again job by job (``db.group_commit.write_each``), except when
its COMMIT may have happened (a connection lost there): those jobs get the error, a 503,
rather than a second copy. The thread ends after ``IDLE_EXIT_S`` without work and is started
again by the next submit, so an app built and dropped (the tests build many) leaves no thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..db import retry
from ..db.group_commit import write_each

log = logging.getLogger(__name__)

IDLE_EXIT_S = 5.0      # the thread ends after this long with nothing to store
MAX_BATCH = 500        # jobs in one transaction


def _maybe_stored(exc: BaseException) -> bool:
    """Whether a failed transaction may have committed (then its jobs are not written again)."""
    return retry.verdict(exc) is retry.Verdict.AMBIGUOUS


@dataclass(eq=False)
class _Pending:
    body: Any                         # the request's JobIn
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    result: Any = None
    error: BaseException | None = field(default=None)


def _settle(batch: list[_Pending]) -> None:
    """In the event loop: hand each request its job or its error (a client gone is skipped)."""
    for p in batch:
        if p.future.done():
            continue
        if p.error is not None:
            p.future.set_exception(p.error)
        else:
            p.future.set_result(p.result)


class Submitter:
    """``await submitter.submit(body)``: the stored ``Job`` for a validated ``JobIn``, or the
    exception its validation or its transaction raised.

    ``validate(bodies)`` returns, for each body, a ``NewJob`` or the exception that refused it
    (run in the submitter thread: it may read the desired state); ``store(new_jobs)`` stores
    them in one transaction and returns the ``Job``s in order (``JobStore.submit_jobs``).
    """

    def __init__(self, validate: Callable[[list], list], store: Callable[[list], list]):
        self._validate = validate
        self._store = store
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches = 0      # transactions written (for tests and the curious)

    async def submit(self, body):
        loop = asyncio.get_running_loop()
        pending = _Pending(body, loop, loop.create_future())
        with self._cv:
            self._queue.append(pending)
            if self._running:
                self._cv.notify()
            else:
                self._running = True
                self._thread = threading.Thread(target=self._run, name="admin-submitter", daemon=True)
                try:
                    self._thread.start()
                except RuntimeError:
                    # no thread to be had now: this request fails (500) rather than waiting for
                    # ever, and the next one tries to start the thread again
                    self._running = False
                    self._queue.remove(pending)
                    raise
        return await pending.future

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._queue and not self._cv.wait_for(lambda: self._queue, IDLE_EXIT_S):
                    self._running = False
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - never leave a request waiting forever
                log.exception("the submitter failed a batch of %d", len(batch))
                for p in batch:
                    if p.error is None and p.result is None:
                        p.error = exc
            loops: dict[int, tuple[asyncio.AbstractEventLoop, list[_Pending]]] = {}
            for p in batch:
                loops.setdefault(id(p.loop), (p.loop, []))[1].append(p)
            for loop, theirs in loops.values():
                try:
                    loop.call_soon_threadsafe(_settle, theirs)
                except RuntimeError:   # that loop is closed: nobody waits for these any more
                    pass

    def _write(self, batch: list[_Pending]) -> None:
        valid = []
        for p, checked in zip(batch, self._validate([p.body for p in batch])):
            if isinstance(checked, BaseException):
                p.error = checked
            else:
                valid.append((p, checked))
        if not valid:
            return
        self.batches += 1
        outcomes = write_each(self._store, [new for _, new in valid], lambda exc: not _maybe_stored(exc))
        for (p, _), (job, error) in zip(valid, outcomes):
            p.result, p.error = job, error
