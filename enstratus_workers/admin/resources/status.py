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
    fig = overview(ctx_of(request))
    # Subscribers that cannot record outcomes (``daemon@name`` -> the database's reason), on top:
    # they hold their jobs unacked, so this is the first thing to read when jobs stall.
    fig["write_errors"] = fig["health"]["checks"].get("write_errors", {})
    return fig


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "the metrics"}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
