"""Runs one attempt and turns whatever happens into the ``Outcome`` the subscriber records.

The attempt is a pipeline: build the action's context, the hooks' ``before_action``, check the
arguments and find the action, run it, turn its result into JSON, build the outcome (the job's
status after it by ``jobs/lifecycle.py``), the hooks' ``after_action``. An unknown action,
arguments that are not a JSON object, a result that is not JSON: each fails the job at once.
What the action itself raises is retried or not by its options (``ActionOptions.retryable``:
an ``ActionError`` fails, anything else may be transient). Either way the worker keeps going.

Two ways out of the pipeline besides a result or a failure:

- ``errors.Deferred``: the action says "not now"; the attempt is recorded as deferred (not
  counted) and the job waits for the delay it asked for (``Task.deferred``).
- A cancel: once ``context.cancelled()`` is true when the action ends (however it ends), the
  attempt ends ``cancelled`` and the action's compensation runs here, its return value the
  job's result, what it raises the job's error. A task cancelled before it started runs
  nothing; a task sent only to compensate (``Task.compensate``: the action was stopped by
  killing its worker, or its subscriber died) runs only the compensation.
"""

from __future__ import annotations

import json
import logging

from ..clock import now_ms
from ..errors import ActionError, Cancelled, Deferred, EnstratusError
from ..jobs.values import Outcome, Task
from .hooks import Hooks
from .registry import ActionContext, Registry

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


class _Refused(Exception):
    """The service, not the action, says the job cannot run (``ActionError`` wrapped, so the
    action's ``retry_on`` does not apply to it)."""


def _run(registry: Registry, task: Task, context: ActionContext) -> str:
    if not isinstance(task.arguments, dict):
        raise _Refused(f"arguments must be a JSON object, not {type(task.arguments).__name__}")
    try:
        action = registry.get(task.action)
    except ActionError as exc:
        raise _Refused(str(exc)) from None
    value = action(task.arguments, context)
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _Refused(f"result is not JSON-serializable: {exc}") from None


def execute(registry: Registry, task: Task, worker: str, services: dict | None = None,
            hooks: Hooks | None = None, cancelled=None) -> Outcome:
    """Run ``task`` as worker ``worker``, with ``services`` in the action's context and ``hooks``
    around it; return its outcome. ``cancelled()`` says whether this task's job was cancelled
    (the worker's watch; None: it never is)."""
    hooks = hooks or Hooks()
    start = now_ms()
    context = ActionContext(job_id=task.job_id, attempt=task.attempt, queue=task.queue, worker=worker,
                            logger=logging.getLogger(f"action.{task.action}"), cancel_check=cancelled,
                            **(services or {}))
    hooks.before(task, context)
    if task.compensate or context.cancelled():
        # stopped elsewhere (compensate what it did there), or cancelled before it started here
        result, error = _compensate(registry, task, context) if task.compensate else (None, None)
        outcome = task.cancelled(worker=worker, start_ms=start, end_ms=now_ms(), result=result, error=error)
    else:
        outcome = _attempt(registry, task, context, worker, start)
    hooks.after(task, context, outcome)
    return outcome


def _attempt(registry: Registry, task: Task, context: ActionContext, worker: str, start: int) -> Outcome:
    """Run the action; its outcome, or the cancel's if the job was cancelled meanwhile."""
    status, result, error, retryable = "succeeded", None, None, False
    deferred = None
    try:
        result = _run(registry, task, context)
    except _Refused as exc:
        status, error = "failed", str(exc)[:MAX_ERROR_CHARS]
        log.warning("job %s (%s) failed: %s", task.job_id, task.action, error)
    except Cancelled as exc:   # the action's way of stopping: the cancel's outcome follows
        status, error = "failed", str(exc)[:MAX_ERROR_CHARS]   # (if the job was not cancelled)
    except Deferred as exc:
        deferred = exc
    except Exception as exc:
        retryable = registry.options(task.action).retryable(exc)
        status = "failed"
        if isinstance(exc, ActionError) and not retryable:
            error = str(exc)[:MAX_ERROR_CHARS]
            log.warning("job %s (%s) failed: %s", task.job_id, task.action, error)
        elif isinstance(exc, EnstratusError):  # a known outage (KM, persistence, cloud): no traceback
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            log.warning("job %s (%s) attempt %s failed: %s", task.job_id, task.action, task.attempt, error)
        else:  # unexpected, maybe transient; the worker lives on
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            log.exception("job %s (%s) raised", task.job_id, task.action)
    if context.cancelled():
        log.info("job %s (%s) attempt %s stopped by a cancel; compensating", task.job_id, task.action,
                 task.attempt)
        result, error = _compensate(registry, task, context)
        return task.cancelled(worker=worker, start_ms=start, end_ms=now_ms(), result=result, error=error)
    if deferred is not None:
        log.info("job %s (%s) %s", task.job_id, task.action, deferred)
        return task.deferred(worker=worker, start_ms=start, end_ms=now_ms(), delay_ms=int(deferred.delay_s * 1000),
                             reason=str(deferred)[:MAX_ERROR_CHARS])
    return task.outcome(status, retryable=retryable, worker=worker, start_ms=start, end_ms=now_ms(),
                        result=result, error=error)


def _compensate(registry: Registry, task: Task, context: ActionContext) -> tuple[str | None, str | None]:
    """Run the action's compensation: (its result as JSON, None), or (None, the error it raised).
    None, None when it declares none (or its arguments never let it run)."""
    try:
        undo = registry.compensation(task.action)
    except ActionError:
        undo = None
    if undo is None or not isinstance(task.arguments, dict):
        return None, None
    try:
        value = undo(task.arguments, context)
        return (None if value is None else json.dumps(value, separators=(",", ":"))), None
    except Exception as exc:   # the job still ends cancelled, with this recorded
        log.exception("job %s (%s): its compensation raised", task.job_id, task.action)
        return None, f"compensation failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
