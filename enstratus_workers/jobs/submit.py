"""Submitting jobs: the one way a job enters the system (a pending row in the provisioning DB).

The CLI, the demo, the benchmark and (later) the admin API all come through here, so every job
is validated the same way. A job is never written to the queue here: the publisher relays it.
"""

from __future__ import annotations

import os
import threading
import time

from enstratus_workers import strictjson
from enstratus_workers.config import limits
from enstratus_workers.db import Databases, Job, NewJob
from enstratus_workers.errors import EnstratusError

WAIT_SAFETY_NET_S = 0.25   # a wait re-reads the job this often even if no ring came (a ring lost)


class SubmitError(EnstratusError, ValueError):
    """The job cannot be stored at all: its arguments are not strict JSON, its queue, action or
    account name is not a valid name, its queue is not configured, its attempts are out of
    range. A ValueError, so Python callers can treat it as the bad input it is."""


def _shown(text: str) -> str:
    """A name quoted for a message, on one line whatever it holds (it is the caller's input)."""
    return ascii(text if len(text) <= 60 else text[:57] + "...")


def _arguments(arguments) -> tuple[str, object]:
    """The arguments as strict JSON text (no NaN/Infinity, no lone surrogates, nothing that a
    reader of the row, another language or the admin API, could not read back), and as a value."""
    if arguments is None:
        return "{}", {}
    try:
        if isinstance(arguments, str):
            # kept as written: the caller's spelling is what the job shows
            return arguments, strictjson.loads(arguments)
        return strictjson.dumps(arguments), arguments
    except strictjson.NotStrictJSON as exc:
        raise SubmitError(f"the arguments are not strict JSON: {exc}") from None


def _account(account, arguments) -> str | None:
    """The job's account: ``account`` if given, else the ``account`` argument (a string or an
    integer, as the cloud actions take it), else none. Either must be a valid account name
    (``limits.ACCOUNT_RULE``), and the two must agree: a job run for one tenant and counted
    against another would dodge that tenant's share and pauses."""
    argued = arguments.get("account") if isinstance(arguments, dict) else None
    if isinstance(argued, bool) or not isinstance(argued, (str, int)):
        argued = None   # not an account the cloud actions would take: the action judges it
    elif isinstance(argued, int):
        argued = str(argued)
    if account is not None:
        if not limits.valid_account(account):
            raise SubmitError(f"invalid account name {_shown(str(account))}: use {limits.ACCOUNT_RULE}")
        if argued is not None and argued != account:
            raise SubmitError(f"the account {_shown(account)} differs from the arguments' account "
                              f"{_shown(argued)}: give one, or the same")
        return account
    if argued is not None and not limits.valid_account(argued):
        raise SubmitError(f"invalid account name {_shown(argued)} in the arguments' 'account': "
                          f"use {limits.ACCOUNT_RULE}")
    return argued


def _attempts(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.MAX_ATTEMPTS:
        raise SubmitError(f"{where} must be an integer between 1 and {limits.MAX_ATTEMPTS}, "
                          f"not {_shown(str(value))}")
    return value


def new_job(settings, action: str, arguments=None, queue: str | None = None,
            *, idempotency_key: str | None = None, max_attempts: int | None = None,
            account: str | None = None, registry=None) -> NewJob:
    """Validate and build a job; ``SubmitError`` (a ValueError) says what is wrong.

    ``arguments`` is JSON text (kept as written) or a JSON-able value; either way it must be
    strict JSON. Whether it is an *object* is the worker's to judge (a job with other JSON is
    stored and fails with the reason, visibly). ``account`` is the tenant the job is for; a job
    without one whose arguments name an ``account`` is that account's (``_account``).
    """
    if not isinstance(action, str) or not limits.ACTION_NAME.fullmatch(action):
        raise SubmitError(f"invalid action name {_shown(str(action))}: use {limits.ACTION_RULE}")
    text, value = _arguments(arguments)
    account = _account(account, value)
    # what the action declares (validated when it registered: actions/options.py)
    options = registry.options(action) if registry is not None and action in registry else None
    queue = queue or (options and options.queue) or settings.worker.default_queue
    if not isinstance(queue, str) or not limits.QUEUE_NAME.fullmatch(queue):
        raise SubmitError(f"invalid queue name {_shown(str(queue))}: use {limits.QUEUE_RULE}")
    if queue not in settings.worker.all_queues:
        raise SubmitError(f"unknown queue {_shown(queue)}; the worker types consume: "
                          f"{', '.join(settings.worker.all_queues)}")
    if max_attempts is not None:
        attempts = _attempts(max_attempts, "max attempts")
    elif options is not None and options.max_attempts is not None:
        attempts = options.max_attempts
    else:
        attempts = settings.worker.max_attempts
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200:
            raise SubmitError("the idempotency key must be 1 to 200 characters")
        try:
            strictjson.check(idempotency_key, "the idempotency key")
        except strictjson.NotStrictJSON as exc:
            raise SubmitError(str(exc)) from None
    return NewJob(action=action, arguments=text, queue=queue, max_attempts=attempts,
                  idempotency_key=idempotency_key, account=account)


def submit(settings, dbs: Databases, action: str, arguments: str | None = None, queue: str | None = None,
           **kw) -> tuple[Job, bool]:
    """Validate and store one job. Its queue is checked against the desired state in the
    provisioning DB (``db/desired.py``: read at most once a second, and again at once for a
    queue the cached answer does not know), so a queue an instance was given through the admin
    API, on any host, takes jobs here too."""
    wanted = queue or settings.worker.default_queue
    known = dbs.desired.knowing(wanted if isinstance(wanted, str) else None)
    return dbs.jobs.submit(new_job(known.submit_settings(settings), action, arguments, queue, **kw))


def cancel(dbs: Databases, job_id: int):
    """Cancel job ``job_id``: a ``db.cancels.CancelAnswer`` whose ``verdict`` says what happened.

    ``cancelled``: it had not started, and never will; ``stopping``: it runs, and its action is
    told through ``ctx.cancelled()`` (killed after ``action.cancel_grace``), its compensation
    runs, and it ends ``cancelled`` (``wait_for`` it); ``finished``: it had ended, and is left as
    it is (``answer.job.status`` says how); ``unknown``: there is no such job (``job`` is None).
    """
    return dbs.jobs.cancel(job_id)


def outcome_bell(run_dir):
    """A waiter's bell of this thread, announced, for ``wait_for(..., bell=)``; None where there
    are no bells (no run directory, one not writable, not Linux): the safety net alone."""
    from enstratus_workers.jobs import wakeup

    if run_dir is None or not wakeup.available():
        return None
    try:
        return wakeup.Bell(run_dir, f"{os.getpid()}-{threading.get_ident()}", wakeup.WAITER).announce()
    except OSError:
        return None


def wait_for(dbs: Databases, job_id: int, timeout: float, run_dir=None, bell=None) -> Job:
    """Wait until the job is terminal or ``timeout`` passes; return it as last seen.

    With ``run_dir`` (the install's), the wait is woken as soon as the job's outcome is recorded
    (``jobs/wakeup.py``: a ring names the jobs recorded, and a ring naming only others is waited
    through without a read) and reads the row then: by this host's recorder, or by another
    host's through the broker and this host's publisher (``mq/amqp_wake.py``). Without, or
    when a ring is lost, it reads the row every ``WAIT_SAFETY_NET_S``.

    ``bell``: one from ``outcome_bell`` announced before the job was submitted (``submit
    --wait`` does so), which this wait uses and closes. Any outcome of the job rings it then,
    so the wait begins by waiting, not by reading the row: a read a moment after the submit
    finds the job pending, and costs its database and its CPU while the job is on its way.
    """
    from enstratus_workers.db.schema import TERMINAL

    read_first = bell is None
    if bell is None:
        bell = outcome_bell(run_dir)
    deadline = time.monotonic() + timeout
    try:
        if not read_first:
            _wait_for_word(bell, job_id, min(timeout, WAIT_SAFETY_NET_S))
        while True:
            job = dbs.jobs.get(job_id)
            left = deadline - time.monotonic()
            if job is None or job.status in TERMINAL or left <= 0:
                return job
            if bell is not None:
                _wait_for_word(bell, job_id, min(left, WAIT_SAFETY_NET_S))
            else:
                time.sleep(min(left, WAIT_SAFETY_NET_S))
    finally:
        if bell is not None:
            bell.close()


def _wait_for_word(bell, job_id: int, timeout: float) -> None:
    """Wait on ``bell`` until a ring that may be about ``job_id`` (one naming it, or naming no
    jobs) or ``timeout``: the rings of other jobs' outcomes cost this waiter no read."""
    deadline = time.monotonic() + timeout
    while bell.wait(deadline - time.monotonic()):
        if bell.recorded is None or job_id in bell.recorded:
            return
