"""Submitting jobs: the one way a job enters the system (a pending row in the provisioning DB).

The CLI, the demo, the benchmark and (later) the admin API all come through here, so every job
is validated the same way. A job is never written to the queue here: the publisher relays it.
"""

from __future__ import annotations

import json
import time

from .db import Databases, Job, NewJob
from .errors import EnstratusError

WAIT_POLL_S = 0.05


class SubmitError(EnstratusError):
    """The job cannot be stored at all (its arguments are not JSON, its queue is unknown)."""


def new_job(settings, action: str, arguments: str | None = None, queue: str | None = None,
            *, idempotency_key: str | None = None, max_attempts: int | None = None,
            registry=None) -> NewJob:
    """Validate and build a job. Arguments must be JSON text; whether they are an *object* is the
    worker's to judge (a job with other JSON is stored and fails with the reason, visibly)."""
    if not action or len(action) > 200:
        raise SubmitError("the action name must be 1 to 200 characters")
    text = "{}" if arguments is None else arguments
    try:
        json.loads(text)
    except ValueError as exc:
        raise SubmitError(f"--args is not valid JSON: {exc}") from None
    queue = queue or settings.worker.default_queue
    if queue not in settings.worker.all_queues:
        raise SubmitError(f"unknown queue '{queue}'; configured: {', '.join(settings.worker.all_queues)}")
    if max_attempts is None and registry is not None and action in registry:
        # an action may declare its own attempt budget: fn.max_attempts = 5
        max_attempts = getattr(registry.get(action), "max_attempts", None)
    attempts = settings.worker.max_attempts if max_attempts is None else max_attempts
    if attempts < 1:
        raise SubmitError("max attempts must be at least 1")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise SubmitError("the idempotency key must be 1 to 200 characters")
    return NewJob(action=action, arguments=text, queue=queue, max_attempts=attempts,
                  idempotency_key=idempotency_key)


def submit(settings, dbs: Databases, action: str, arguments: str | None = None, queue: str | None = None,
           **kw) -> tuple[Job, bool]:
    return dbs.jobs.submit(new_job(settings, action, arguments, queue, **kw))


def wait_for(dbs: Databases, job_id: int, timeout: float) -> Job:
    """Poll until the job is terminal or ``timeout`` passes; return it as last seen."""
    from .db.schema import TERMINAL

    deadline = time.monotonic() + timeout
    while True:
        job = dbs.jobs.get(job_id)
        if job is None or job.status in TERMINAL or time.monotonic() >= deadline:
            return job
        time.sleep(WAIT_POLL_S)
