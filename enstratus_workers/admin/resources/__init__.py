"""The JSON resources of the admin API, one router per module; every route needs the token."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import require_token
from . import hosts, instances, jobs, pauses, queues, status


def api_router() -> APIRouter:
    """Every API route behind ``require_token`` (and so marked as secured in the OpenAPI spec)."""
    router = APIRouter(dependencies=[Depends(require_token)])
    for module in (instances, queues, pauses, jobs, status, hosts):
        router.include_router(module.router)
    return router
