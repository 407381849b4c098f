"""What an action declares about itself: its time limit, attempt budget, queue, retry rule, and
the compensation that undoes what it did when its job is cancelled.

Declared once, where the action is written (``@action(time_limit=60)``, or
``Registry.register(name, fn, options=...)``), and validated when it registers against the same
ranges as the config files (``config/limits.py``): a bad option is refused there, not found out
by the submit or the subscriber that reads it later. The older spelling, function attributes
(``fn.time_limit = 60``, ``fn.max_attempts = 5``), is still read and validated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import limits
from ..errors import ActionError, EnstratusError

#: where ``@action`` leaves the options on the function
OPTIONS_ATTRIBUTE = "action_options"


class ActionOptionsError(EnstratusError, ValueError):
    """An action declares an option out of range or of the wrong kind."""


def _time_limit(value):
    lo, hi = limits.RANGES["action.time_limit"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value <= hi:
        raise ActionOptionsError(f"time_limit must be a number above {lo:g} and at most {hi:g}, "
                                 f"not {value!r}"[:200])


def _max_attempts(value):
    lo, hi = limits.RANGES["action.max_attempts"]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ActionOptionsError(f"max_attempts must be an integer between {lo} and {hi}, not {value!r}"[:200])


def _exceptions(value, what: str) -> tuple:
    types = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise ActionOptionsError(f"{what} must be exception types, not {value!r}"[:200])
    return types


@dataclass(frozen=True)
class ActionOptions:
    """An action's own settings; ``None`` means the service's (action.time_limit, action.max_attempts,
    worker.default_queue).

    Which failures are retried: an exception of a ``fail_on`` type fails the job at once, one of a
    ``retry_on`` type is retried; otherwise the service's rule holds (an ``ActionError`` fails,
    anything else may be transient and is retried).

    ``compensate``: called as ``compensate(arguments, context) -> JSON-able`` in a worker after a
    cancel stopped the action (in the same worker once the action returned, or in another when
    the action had to be killed or its subscriber died). It must be idempotent and must not
    assume how far the action got; what it returns is the cancelled job's result, what it raises
    its error (the job still ends ``cancelled``).
    """

    time_limit: float | None = None
    max_attempts: int | None = None
    queue: str | None = None
    retry_on: tuple = ()
    fail_on: tuple = ()
    compensate: Callable | None = None

    def __post_init__(self):
        if self.time_limit is not None:
            _time_limit(self.time_limit)
        if self.max_attempts is not None:
            _max_attempts(self.max_attempts)
        if self.queue is not None and not (isinstance(self.queue, str) and limits.QUEUE_NAME.fullmatch(self.queue)):
            raise ActionOptionsError(f"queue must be a queue name ({limits.QUEUE_RULE}), not {self.queue!r}"[:200])
        object.__setattr__(self, "retry_on", _exceptions(self.retry_on, "retry_on"))
        object.__setattr__(self, "fail_on", _exceptions(self.fail_on, "fail_on"))
        if self.compensate is not None and not callable(self.compensate):
            raise ActionOptionsError(f"compensate must be callable, not {self.compensate!r}"[:200])
        both = set(self.retry_on) & set(self.fail_on)
        if both:
            raise ActionOptionsError(f"{', '.join(sorted(t.__name__ for t in both))} both retried and failed")

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failure the action raised may be retried (class docstring)."""
        if isinstance(exc, self.fail_on):
            return False
        if isinstance(exc, self.retry_on):
            return True
        return not isinstance(exc, ActionError)

    @classmethod
    def of(cls, fn) -> "ActionOptions":
        """The options ``fn`` declares: by ``@action``, or by the legacy attributes."""
        declared = getattr(fn, OPTIONS_ATTRIBUTE, None)
        if isinstance(declared, cls):
            return declared
        return cls(time_limit=getattr(fn, "time_limit", None), max_attempts=getattr(fn, "max_attempts", None))


def action(fn=None, /, **options):
    """Declare an action's options where it is written: ``@action(time_limit=60, max_attempts=5)``,
    ``@action(compensate=undo_launch)``.

    The options are validated here and again when the action registers; ``@action`` alone
    declares none.
    """
    declared = ActionOptions(**options)

    def mark(f):
        setattr(f, OPTIONS_ATTRIBUTE, declared)
        return f

    return mark(fn) if fn is not None else mark
