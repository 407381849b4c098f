"""Hooks around an action: what every attempt needs done before and after it, outside the action.

The worker process builds one chain and the executor calls it around each action (Dramatiq's
middleware, River's worker middleware): ``before_action`` in order, ``after_action`` in reverse,
so the hook that set something up first tears it down last. A hook that raises is logged and
skipped: bookkeeping must not fail the job, nor keep the other hooks from running.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Hook:
    """Base of the hooks: override what you need; both are called for every attempt the
    worker runs, including one that fails before its action is called (unknown action, bad
    arguments)."""

    def before_action(self, task, context) -> None:
        """Before the action runs (``task``: ``jobs.values.Task``; ``context``: ``ActionContext``)."""

    def after_action(self, task, context, outcome) -> None:
        """After the attempt ended, with its ``jobs.values.Outcome``."""


class Hooks:
    """An ordered chain of hooks."""

    def __init__(self, hooks=()):
        self.hooks = tuple(hooks)

    def before(self, task, context) -> None:
        for hook in self.hooks:
            self._call(hook, "before_action", task, context)

    def after(self, task, context, outcome) -> None:
        for hook in reversed(self.hooks):
            self._call(hook, "after_action", task, context, outcome)

    @staticmethod
    def _call(hook, method: str, task, *args) -> None:
        try:
            getattr(hook, method)(task, *args)
        except Exception:
            log.exception("hook %s.%s failed for job %s; skipped", type(hook).__name__, method, task.job_id)
