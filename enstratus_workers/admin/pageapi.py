"""The API calls the pages make, under ``/ui/api`` where the session cookie is sent.

These are the JSON API's own route functions (start and stop a worker type, submit a job, reset
the counts, cancel a job, re-drive dead jobs, pause and resume a queue or an account), mounted
a second time: same checks, same answers, but authorized by the page
session (or the token) instead of the token alone. Nothing else of the API takes the cookie, so
a stolen or ridden session can do what the buttons do and no more. They are left out of the
OpenAPI spec: scripts use the real routes with the token.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .auth import require_page_session
from .resources import instances, jobs, pauses, redrive

PREFIX = "/ui/api"

#: (method, path under PREFIX, the API route function it reuses)
CALLS = (
    ("POST", "/instances/{instance_id}/start", instances.start_instance),
    ("POST", "/instances/{instance_id}/disable", instances.disable_instance),
    ("POST", "/jobs", jobs.submit_job),
    ("POST", "/jobs/stats/reset", jobs.reset_job_stats),
    ("POST", "/jobs/dead/retry", redrive.retry_dead_jobs),
    ("POST", "/jobs/{job_id}/retry", redrive.retry_job),
    ("POST", "/jobs/{job_id}/cancel", jobs.cancel_job),
    ("POST", "/queues/{name}/pause", pauses.pause_queue),
    ("POST", "/queues/{name}/resume", pauses.resume_queue),
    ("POST", "/accounts/{account}/pause", pauses.pause_account),
    ("POST", "/accounts/{account}/resume", pauses.resume_account),
)


def page_api_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(require_page_session)])
    for method, path, endpoint in CALLS:
        original = next(r for r in _routes() if r.endpoint is endpoint)
        router.add_api_route(path, endpoint, methods=[method], response_model=original.response_model,
                             status_code=original.status_code)
    return router


def _routes():
    return [*instances.router.routes, *jobs.router.routes, *redrive.router.routes, *pauses.router.routes]
