"""Actions: the named units of work a worker process runs."""

from .registry import ActionContext, Registry, default_registry, ENTRY_POINT_GROUP

__all__ = ["ActionContext", "Registry", "default_registry", "ENTRY_POINT_GROUP"]
