"""Actions: the named units of work a worker process runs."""

from .options import ActionOptions, ActionOptionsError, action
from .registry import ENTRY_POINT_GROUP, ActionContext, Registry, default_registry

__all__ = ["ActionContext", "ActionOptions", "ActionOptionsError", "Registry", "action",
           "default_registry", "ENTRY_POINT_GROUP"]
