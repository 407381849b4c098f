"""The registry of named actions a worker can run: built-ins plus plug-ins from an entry-point group.

A plug-in package declares, in its own pyproject.toml::

    [project.entry-points."enstratus_workers.actions"]
    "dns.update" = "mypkg.actions:update_dns"

and the callable is run as ``update_dns(arguments: dict, context: ActionContext) -> JSON-able``.
Its options (``options.py``) are declared with ``@action(...)`` or at ``register`` and checked there.
No global registry: each worker process builds one and passes it where it is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from ..errors import ActionError, Cancelled
from .options import ActionOptions, ActionOptionsError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "enstratus_workers.actions"


@dataclass
class ActionContext:
    """What an action gets besides its arguments. Actions are told the attempt: delivery is at
    least once, so an action that may run twice checks what its earlier attempt already did.

    A long action asks ``cancelled()`` now and then (in its loop, between cloud calls) and stops
    once it is true, by returning or raising: the attempt then ends ``cancelled`` whatever it
    returns, and the action's compensation (``@action(compensate=...)``) runs. An action that
    does not stop within ``action.cancel_grace`` is killed with its worker process.
    """

    job_id: int
    attempt: int
    queue: str
    worker: str
    logger: logging.Logger
    settings: Any = None
    km: Any = None             # KM client (credentials), when the KM service is configured
    persistence: Any = None    # persistence layer (platform objects)
    cloud_limits: Any = None   # the cloud API limits (cloud/limiter.py); None: cloud calls unlimited
    extras: dict = field(default_factory=dict)
    # the worker's watch over this attempt's cancel (daemons/worker.py); None: never cancelled
    cancel_check: Callable[[], bool] | None = field(default=None, repr=False)

    def cancelled(self) -> bool:
        """Whether this job was cancelled. Cheap enough for every turn of a loop: a flag, and a
        look at the worker's socket only after its subscriber signalled a cancel."""
        return self.cancel_check is not None and self.cancel_check()

    def stop_if_cancelled(self) -> None:
        """Raise ``errors.Cancelled`` if this job was cancelled (a shorthand for the loop)."""
        if self.cancelled():
            raise Cancelled(f"job {self.job_id} was cancelled")


Action = Callable[[dict, ActionContext], Any]


class Registry:
    def __init__(self):
        self._actions: dict[str, Action] = {}
        self._options: dict[str, ActionOptions] = {}

    def register(self, name: str, action: Action, options: ActionOptions | None = None) -> None:
        """Add ``action``; its options are ``options``, else what it declares (``ActionOptions.of``).
        A bad option raises ``ActionOptionsError`` here and nothing is registered."""
        if not callable(action):
            raise TypeError(f"action {name!r} is not callable")
        if options is not None and not isinstance(options, ActionOptions):
            raise TypeError(f"the options of action {name!r} are not ActionOptions")
        try:
            options = options or ActionOptions.of(action)
        except ActionOptionsError as exc:
            raise ActionOptionsError(f"action {name}: {exc}") from None
        self._actions[name], self._options[name] = action, options

    def get(self, name: str) -> Action:
        try:
            return self._actions[name]
        except KeyError:
            raise ActionError(f"unknown action '{name}'") from None

    def options(self, name: str) -> ActionOptions:
        self.get(name)
        return self._options[name]

    def compensation(self, name: str) -> Action | None:
        """The compensation ``name`` declares, or None (none, or no such action)."""
        options = self._options.get(name)
        return options.compensate if options is not None else None

    def time_limits(self) -> dict[str, float]:
        """The actions that declare their own time limit (over action.time_limit), in seconds."""
        return {name: float(o.time_limit) for name, o in self._options.items() if o.time_limit is not None}

    def names(self) -> list[str]:
        return sorted(self._actions)

    def __contains__(self, name: str) -> bool:
        return name in self._actions

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every action of the entry-point group; a broken plug-in is logged and skipped."""
        loaded = []
        for ep in entry_points(group=group):
            try:
                self.register(ep.name, ep.load())
                loaded.append(ep.name)
            except Exception:  # a broken plug-in must not take the built-ins down with it
                log.exception("could not load action plug-in %s = %s", ep.name, ep.value)
        return loaded


def default_registry(*, plugins: bool = True) -> Registry:
    """Built-ins (noop, echo, sleep, fail), the cloud actions, then plug-ins (which may override)."""
    from ..cloud.actions import register_cloud_actions
    from . import builtins

    reg = Registry()
    builtins.register_all(reg)
    register_cloud_actions(reg)
    if plugins:
        reg.load_plugins()
    return reg
