"""The JSON resources of the admin API, one router per module; every route needs the token."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import require_token
from . import audit, hosts, instances, jobs, pauses, queues, redrive, status

# redrive before jobs: its /jobs/dead/retry must be matched before any /jobs/{job_id}/...
MODULES = (instances, queues, pauses, redrive, jobs, status, hosts, audit)


def api_router() -> APIRouter:
    """Every API route behind ``require_token`` (and so marked as secured in the OpenAPI spec)."""
    router = APIRouter(dependencies=[Depends(require_token)])
    for module in MODULES:
        router.include_router(module.router)
    return router


def audited_routes() -> dict[tuple[str, str], str]:
    """``(method, path) -> action`` of every route that records itself in the audit log."""
    return {(method, route.path): route.endpoint.audit_action for module in MODULES
            for route in module.router.routes if getattr(route.endpoint, "audit_action", None)
            for method in route.methods}
