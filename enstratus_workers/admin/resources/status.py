"""``/status`` (the figures of the status page, health included) and ``/metrics`` (Prometheus).

Both read the shared engines at request time, as the terminal monitor does: the admin daemon
keeps no figures of its own, so any number of them agree.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..context import ctx_of
from ..errors import COMMON
from ..figures import overview

router = APIRouter(tags=["status"], responses=COMMON)


@router.get("/status", summary="Clusters (from heartbeats), desired vs on-line workers, queues, health")
def status(request: Request) -> dict:
    return overview(ctx_of(request))


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "the metrics"}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
