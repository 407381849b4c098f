"""Actions: the named units of work a worker process runs."""

from .options import ActionOptions, ActionOptionsError, action
from .registry import ActionContext, Registry, default_registry, ENTRY_POINT_GROUP

__all__ = ["ActionContext", "ActionOptions", "ActionOptionsError", "Registry", "action",
           "default_registry", "ENTRY_POINT_GROUP"]
