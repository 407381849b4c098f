"""Runs one attempt and turns whatever happens into the ``Outcome`` the subscriber records.

The attempt is a pipeline: build the action's context, the hooks' ``before_action``, check the
arguments and find the action, run it, turn its result into JSON, build the outcome (the job's
status after it by ``jobs/lifecycle.py``), the hooks' ``after_action``. An unknown action,
arguments that are not a JSON object, a result that is not JSON: each fails the job at once.
What the action itself raises is retried or not by its options (``ActionOptions.retryable``:
an ``ActionError`` fails, anything else may be transient). Either way the worker keeps going.
"""

from __future__ import annotations

import json
import logging

from ..clock import now_ms
from ..errors import ActionError, EnstratusError
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
            hooks: Hooks | None = None) -> Outcome:
    """Run ``task`` as worker ``worker``, with ``services`` in the action's context and ``hooks``
    around it; return its outcome."""
    hooks = hooks or Hooks()
    start = now_ms()
    context = ActionContext(job_id=task.job_id, attempt=task.attempt, queue=task.queue, worker=worker,
                            logger=logging.getLogger(f"action.{task.action}"), **(services or {}))
    hooks.before(task, context)
    status, result, error, retryable = "succeeded", None, None, False
    try:
        result = _run(registry, task, context)
    except _Refused as exc:
        status, error = "failed", str(exc)[:MAX_ERROR_CHARS]
        log.warning("job %s (%s) failed: %s", task.job_id, task.action, error)
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
    outcome = task.outcome(status, retryable=retryable, worker=worker, start_ms=start, end_ms=now_ms(),
                           result=result, error=error)
    hooks.after(task, context, outcome)
    return outcome
