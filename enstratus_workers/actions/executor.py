"""Runs one action and turns whatever happens into an outcome the subscriber can record.

An unknown action, arguments that are not a JSON object, an ``ActionError``, a result that is
not JSON: each is a permanent failure (``retryable`` false). Any other exception is an attempt
that failed and may be retried (``jobs/lifecycle.py``). Either way the worker process keeps going.
"""

from __future__ import annotations

import json
import logging
import time

from ..errors import ActionError, EnstratusError
from .registry import ActionContext, Registry

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


def now_ms() -> int:
    return int(time.time() * 1000)


def execute(registry: Registry, task: dict, worker: str, services: dict | None = None) -> dict:
    """Run ``task`` ({job_id, action, arguments, attempt, queue}); return the outcome as a dict."""
    start = now_ms()
    status, result, error, retryable = "succeeded", None, None, False
    try:
        arguments = task.get("arguments")
        if not isinstance(arguments, dict):
            raise ActionError(f"arguments must be a JSON object, not {type(arguments).__name__}")
        action = registry.get(task["action"])
        context = ActionContext(job_id=task["job_id"], attempt=task["attempt"], queue=task.get("queue", ""),
                                worker=worker, logger=logging.getLogger(f"action.{task['action']}"),
                                **(services or {}))
        value = action(arguments, context)
        try:
            result = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ActionError(f"result is not JSON-serializable: {exc}") from None
    except ActionError as exc:
        status, error = "failed", str(exc)[:MAX_ERROR_CHARS]
        log.warning("job %s (%s) failed: %s", task.get("job_id"), task.get("action"), error)
    except EnstratusError as exc:  # a known outage (KM, persistence, cloud): retried, no traceback
        status, error, retryable = "failed", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], True
        log.warning("job %s (%s) attempt %s failed: %s", task.get("job_id"), task.get("action"),
                    task.get("attempt"), error)
    except Exception as exc:  # unexpected, maybe transient: retried (see jobs/lifecycle.py); the worker lives on
        status, error, retryable = "failed", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], True
        log.exception("job %s (%s) raised", task.get("job_id"), task.get("action"))
    return {"job_id": task["job_id"], "attempt": task["attempt"], "status": status, "retryable": retryable,
            "result": result, "error": error, "start_ms": start, "end_ms": now_ms(), "worker": worker}
