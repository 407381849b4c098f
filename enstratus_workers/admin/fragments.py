"""The pages' live parts: what the pages' script fetches every few seconds under
``/ui/fragments/...`` and swaps in, and what the pages are first sent with.

Each is the HTML of the same figures the JSON API answers (rendered by ``render``,
``render_job``, ``render_dead``, ``render_audit``, ``charts``). A fragment wants the page
session or the token (401 "log in again" otherwise, before its query is even looked at), and
checks its query as the API does: a bad filter gets the API's 422, naming the parameter.
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse

from ..clock import now_ms
from ..db.job_search import JobFilter, count_jobs, find_jobs
from ..db.pauses import fleet_pauses
from ..jobs import lifecycle
from . import charts, jobstats, render
from .auth import require_page_session
from .context import AdminContext, ctx_of
from .figures import overview
from .render_audit import audit_fragment
from .render_dead import dead_fragment
from .render_job import job_page_fragment
from .resources import audited_routes
from .resources.audit import AUDIT_ACTION_PATTERN, audit_page
from .resources.jobs import job_filter
from .strictbody import printable

router = APIRouter(prefix="/ui/fragments", include_in_schema=False, dependencies=[Depends(require_page_session)])

_NO_STORE = {"Cache-Control": "no-store"}   # figures must never come from a cache
#: the buttons a job's page offers: the calls ``pageapi`` mounts for them
JOB_BUTTONS = frozenset({"cancel", "retry"})
#: rows of the Jobs and Dead tabs
LISTED = 50
#: actions the log may hold besides the audited routes': the login form's, and the CLI's own
_OTHER_ACTIONS = ("session.login", "session.logout")


def _html(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers=_NO_STORE)


# -- what the pages are first sent with, and their fragments' bodies -------------------------------
def jobs_html(ctx: AdminContext, where: JobFilter = JobFilter()) -> str:
    jobs = [printable(j.as_dict()) for j in find_jobs(ctx.dbs.provisioning, where, LISTED)]
    return render.jobs_fragment(jobstats.stats(ctx.store, ctx.dbs.provisioning), jobs, bool(where.as_query()))


def job_page_html(ctx: AdminContext, job) -> str:
    return job_page_fragment(printable(job.as_dict()), ctx.dbs.events.for_job(job.job_id),
                             ctx.dbs.events.server_events_for_job(job.job_id), now_ms(), JOB_BUTTONS)


def dead_html(ctx: AdminContext) -> str:
    dead = JobFilter(status=lifecycle.DEAD)
    jobs = [printable(j.as_dict()) for j in find_jobs(ctx.dbs.provisioning, dead, LISTED)]
    return dead_fragment(jobs, count_jobs(ctx.dbs.provisioning, dead))


def charts_html(ctx: AdminContext) -> str:
    return charts.charts_fragment(charts.last_hour(ctx.dbs.events, now_ms()))


def audit_html(request: Request, action: Optional[str], before: Optional[int]) -> str:
    page = audit_page(request, action, before, LISTED)
    return audit_fragment([e.model_dump() for e in page.entries], page.next_before, action)


def audit_actions() -> list[str]:
    """Every action the log may hold: each audited route declares its own."""
    return sorted(set(audited_routes().values()) | set(_OTHER_ACTIONS))


# -- the fragments ---------------------------------------------------------------------------------
def status_html(ctx: AdminContext) -> str:
    return render.status_fragment(overview(ctx), fleet_pauses(ctx.dbs).list())


@router.get("/status")
def status_fragment(request: Request):
    return _html(status_html(ctx_of(request)))


@router.get("/charts")
def charts_fragment(request: Request):
    return _html(charts_html(ctx_of(request)))


@router.get("/jobs")
def jobs_fragment(request: Request, where: JobFilter = Depends(job_filter)):
    return _html(jobs_html(ctx_of(request), where))


@router.get("/job/{job_id}")
def job_fragment(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    """The Launch page's outcome box."""
    job = ctx_of(request).dbs.jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return _html(render.job_fragment(printable(job.as_dict())))


@router.get("/jobpage/{job_id}")
def job_page_fragment_route(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    ctx = ctx_of(request)
    job = ctx.dbs.jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return _html(job_page_html(ctx, job))


@router.get("/dead")
def dead_fragment_route(request: Request):
    return _html(dead_html(ctx_of(request)))


@router.get("/audit")
def audit_fragment_route(request: Request,
                         action: Optional[str] = Query(default=None, pattern=AUDIT_ACTION_PATTERN, max_length=64),
                         before: Optional[int] = Query(default=None, ge=1, le=2**63 - 1)):
    return _html(audit_html(request, action, before))
