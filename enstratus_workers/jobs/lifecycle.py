"""Retry policy: which failures are retried, how long the broker holds a retry, when a job is dead.

An ``ActionError`` is the action (or the service) saying the job cannot succeed as given — an
unknown action, bad arguments, a refusal: the job ends ``failed`` at once. Anything else — an
unexpected exception, a worker process that died under the action, a time limit — may be
transient: the attempt is recorded, and the job goes back to ``pending`` so the publisher
relays it again with a broker-held delay that doubles per attempt. After its last attempt it
ends ``dead`` and its message goes to the queue's dead-letter queue.
"""

from __future__ import annotations

BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 300_000


def backoff_ms(attempts_done: int) -> int:
    """Delay before the next attempt of a job that has had ``attempts_done`` attempts."""
    if attempts_done <= 0:
        return 0
    return min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** min(attempts_done - 1, 20))


def job_status_after(attempt_status: str, retryable: bool, attempt: int, max_attempts: int) -> str:
    """The job's status once this attempt is recorded: succeeded, failed, pending (retry) or dead."""
    if attempt_status == "succeeded":
        return "succeeded"
    if not retryable:
        return "failed"
    return "pending" if attempt < max_attempts else "dead"


def event_outcome(job_status: str) -> str:
    """The analytics event's outcome for an attempt: a retried attempt is recorded as 'retry'."""
    return "retry" if job_status == "pending" else job_status
