"""A job's life: its statuses, and every rule that moves it from one to the next.

Small pure functions, one per transition; the daemons, the job store and the CLI call them
instead of doing the arithmetic themselves (``db/jobs.py`` only turns them into guarded SQL).

- After an attempt (``job_status_after``): an ``ActionError`` is the action (or the service)
  saying the job cannot succeed as given — an unknown action, bad arguments, a refusal: the job
  ends ``failed`` at once. Anything else — an unexpected exception, a worker process that died
  under the action, a time limit — may be transient: the job goes back to ``pending``, or ends
  ``dead`` after its last attempt (its message then goes to the queue's dead-letter queue).
- The next attempt (``next_attempt``): the publisher relays a pending job that has had *n*
  attempts as attempt *n + 1*, held by the broker for a delay that doubles per attempt (1 s,
  2 s, 4 s ... at most 5 min; no jitter: each distinct delay is a delay queue of its own).
- Who may write an attempt (``attempt_verdict``): the one-owner-per-attempt rule of
  ``db/jobs.py``'s docstring, for a row as read.
- A lost attempt (``after_lost``, stuck-job recovery): back to ``pending``, or ``dead`` if it
  was the last.
- Re-drive (``redrive_max_attempts``, ``dead retry``): a dead job becomes ``pending`` with more
  attempts.
- Cancel (``cancel_verdict``): a job that has not started ends ``cancelled`` at once; a running
  one is asked to stop (its row keeps the time of the request) and ends ``cancelled`` when its
  attempt does, after its compensation. A job that goes back to ``pending`` while a cancel is
  requested (its attempt was lost, or ended in a retry) is relayed only to carry that
  compensation to a worker: at once, never as another try of its action.
- Deferral (``after_deferral``): an action that says "not now" (``errors.Deferred``) puts its
  job back to ``pending`` without using the attempt, held until ``not_before_ms``.
"""

from __future__ import annotations

from typing import NamedTuple

from enstratus_workers.backoff import Backoff

# The statuses a job moves through (DESIGN.md): pending -> queued -> running -> terminal.
PENDING, QUEUED, RUNNING = "pending", "queued", "running"
SUCCEEDED, FAILED, DEAD, CANCELLED = "succeeded", "failed", "dead", "cancelled"
ACTIVE = (PENDING, QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, DEAD, CANCELLED)
STATUSES = ACTIVE + TERMINAL
#: the statuses in which the row's next attempt is open to the first writer
OPEN = (PENDING, QUEUED)

#: the broker-held delay before a retry; never jittered (see the module docstring)
RETRY_BACKOFF = Backoff(first=1.0, cap=300.0, jitter=None)


def job_status_after(attempt_status: str, retryable: bool, attempt: int, max_attempts: int) -> str:
    """The job's status once this attempt is recorded: succeeded, failed, pending (retry) or dead."""
    if attempt_status == SUCCEEDED:
        return SUCCEEDED
    if not retryable:
        return FAILED
    return PENDING if attempt < max_attempts else DEAD


#: the analytics event's outcome of an attempt its action deferred (errors.Deferred)
DEFERRED = "deferred"


def event_outcome(job_status: str, deferred: bool = False) -> str:
    """The analytics event's outcome for an attempt: a retried attempt is recorded as 'retry',
    a deferred one as 'deferred'."""
    if deferred:
        return DEFERRED
    return "retry" if job_status == PENDING else job_status


def backoff_ms(attempts_done: int) -> int:
    """Broker-held delay before the next attempt of a job that has had ``attempts_done``: none
    before the first, then 1 s, doubling, at most 5 min."""
    return int(RETRY_BACKOFF.delay(attempts_done) * 1000)


class NextAttempt(NamedTuple):
    attempt: int
    delay_ms: int


def next_attempt(attempts_done: int, not_before_ms: int | None = None, now_ms: int = 0,
                 cancel_requested: bool = False) -> NextAttempt:
    """The attempt a pending job that has had ``attempts_done`` attempts is relayed as, and the
    delay the broker holds it for first.

    A job that has had attempts is a retry, held for its backoff; a deferred one
    (``not_before_ms``) is held until then instead (what is left of it at ``now_ms``); one whose
    cancel was requested is relayed only to run its compensation, which waits for nothing.
    """
    if cancel_requested:
        return NextAttempt(attempts_done + 1, 0)
    if not_before_ms is not None:
        return NextAttempt(attempts_done + 1, min(max(0, not_before_ms - now_ms), MAX_DEFER_MS))
    return NextAttempt(attempts_done + 1, backoff_ms(attempts_done))


#: the longest an action may defer its job: what a broker-held delay can hold (mq.base.MAX_DELAY_MS)
MAX_DEFER_MS = 2**32 - 1


class Deferral(NamedTuple):
    attempts: int             # the row's attempts after it: as before the deferred attempt
    not_before_ms: int        # the job is relayed no sooner than this


def after_deferral(attempt: int, delay_ms: int, now_ms: int) -> Deferral:
    """A deferred attempt does not count: the row goes back to the attempts it had before it, and
    the next relay of the same attempt is held until ``delay_ms`` from now."""
    return Deferral(attempt - 1, now_ms + min(max(0, int(delay_ms)), MAX_DEFER_MS))


def attempts_after(attempt: int, deferred: bool) -> int:
    """The row's attempts once ``attempt`` is recorded: itself, or the one before if deferred."""
    return attempt - 1 if deferred else attempt


def attempt_verdict(status: str, attempts: int, owner: str | None, attempt: int, me: str) -> str:
    """May ``me`` write attempt ``attempt`` of a row reading (status, attempts, owner)?

    ``run`` (the attempt is open, or held by ``me``), ``foreign`` (held by another owner: it may
    be taken over only once that owner's heartbeat expired) or ``stale`` (closed).
    """
    if status in OPEN and attempts == attempt - 1:
        return "run"
    if status == RUNNING and attempts == attempt:
        return "run" if owner == me else "foreign"
    return "stale"


class AfterLoss(NamedTuple):
    status: str
    attempts: int


def after_lost(attempts: int, max_attempts: int, cancel_requested: bool = False) -> AfterLoss:
    """A job whose attempt was lost (its subscriber gone, or its message): ``dead`` when it has
    had its last attempt, else ``pending`` for the outbox to relay it again. The row keeps its
    attempts (at least 1: a lost first attempt counts), so the lost attempt is closed and its
    owner, should it wake, can write nothing.

    With a cancel requested it is never retried nor dead: it goes ``pending`` only for the outbox
    to carry its compensation to a worker (``next_attempt``), which ends it ``cancelled``."""
    if cancel_requested:
        return AfterLoss(PENDING, max(attempts, 1))
    status = DEAD if attempts >= max_attempts else PENDING
    return AfterLoss(status, max(attempts, 1))


#: what a cancel request does to a job, by ``cancel_verdict``
CANCEL_NOW, CANCEL_ASK, CANCEL_FINISHED = "cancelled", "stopping", "finished"


def cancel_verdict(status: str, cancel_requested: bool) -> str:
    """What a cancel does to a row reading ``status``: ``cancelled`` (it has not started: it ends
    at once, and its message, if any, is a stale duplicate when delivered), ``stopping`` (its
    attempt is running, or its compensation is on its way: the owner is asked to stop it) or
    ``finished`` (it ended: a cancel changes nothing)."""
    if status in TERMINAL:
        return CANCEL_FINISHED
    if status in OPEN and not cancel_requested:
        return CANCEL_NOW
    return CANCEL_ASK


def redrive_max_attempts(attempts: int, extra_attempts: int) -> int:
    """A dead job re-driven goes ``pending`` with ``extra_attempts`` more than it has had."""
    return attempts + extra_attempts
