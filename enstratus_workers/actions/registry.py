"""The registry of named actions a worker can run: built-ins plus plug-ins from an entry-point group.

A plug-in package declares, in its own pyproject.toml::

    [project.entry-points."enstratus_workers.actions"]
    "dns.update" = "mypkg.actions:update_dns"

and the callable is run as ``update_dns(arguments: dict, context: ActionContext) -> JSON-able``.
No global registry: each worker process builds one and passes it where it is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from ..errors import ActionError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "enstratus_workers.actions"


@dataclass
class ActionContext:
    """What an action gets besides its arguments. Actions are told the attempt: delivery is at
    least once, so an action that may run twice checks what its earlier attempt already did."""

    job_id: int
    attempt: int
    queue: str
    worker: str
    logger: logging.Logger
    settings: Any = None
    km: Any = None             # KM client (credentials), when the KM service is configured
    persistence: Any = None    # persistence layer (platform objects)
    extras: dict = field(default_factory=dict)


Action = Callable[[dict, ActionContext], Any]


class Registry:
    def __init__(self):
        self._actions: dict[str, Action] = {}

    def register(self, name: str, action: Action) -> None:
        if not callable(action):
            raise TypeError(f"action {name!r} is not callable")
        self._actions[name] = action

    def get(self, name: str) -> Action:
        try:
            return self._actions[name]
        except KeyError:
            raise ActionError(f"unknown action '{name}'") from None

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
