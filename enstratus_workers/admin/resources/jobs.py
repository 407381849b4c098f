"""``/jobs``: submit a job (through ``enstratus_workers.jobs.submit``, the one way in), list and read
jobs, and the counts by status with their reset.

The arguments are stored as strict JSON (``StrictBody`` refused anything else before this runs);
jobs are answered through ``printable``, so a row stored with bad text by anything else is still
shown (with replacement characters) instead of failing the whole listing.
"""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Path, Query, Request, Response

from enstratus_workers.jobs.submit import submit

from ... import strictjson
from ...db.instances import NotFound
from ...db.schema import STATUSES
from .. import jobstats
from ..context import ctx_of
from ..errors import COMMON, NOT_FOUND, invalid
from ..models import JobIn, JobOut, JobStats, SubmitOut
from ..strictbody import printable

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=COMMON)

Status = Literal[STATUSES]  # type: ignore[valid-type]


def _out(job) -> JobOut:
    return JobOut(**printable(job.as_dict()))


@router.post("", response_model=SubmitOut, status_code=201,
             responses={200: {"model": SubmitOut, "description": "the idempotency key named an earlier job"}},
             summary="Submit a job (stored pending; the publisher relays it)")
def submit_job(body: JobIn, request: Request, response: Response):
    ctx = ctx_of(request)
    try:
        arguments = strictjson.dumps(body.arguments)
    except strictjson.NotStrictJSON as exc:
        raise invalid(str(exc), "body", "arguments") from None
    job, created = submit(ctx.submit_settings(), ctx.dbs, body.action, arguments,
                          body.queue, idempotency_key=body.idempotency_key, max_attempts=body.max_attempts,
                          registry=ctx.registry)
    if not created:
        response.status_code = 200
    return SubmitOut(created=created, job=_out(job))


@router.get("", response_model=list[JobOut], summary="The latest jobs, newest first")
def list_jobs(request: Request, status: Optional[Status] = Query(default=None),
              limit: int = Query(default=50, ge=1, le=500)):
    return [_out(j) for j in ctx_of(request).dbs.jobs.list(status=status, limit=limit)]


@router.get("/stats", response_model=JobStats, summary="Jobs by status, created since the last reset")
def job_stats(request: Request):
    ctx = ctx_of(request)
    return jobstats.stats(ctx.store, ctx.dbs.provisioning)


@router.post("/stats/reset", response_model=JobStats, summary="Count only jobs created from now on")
def reset_job_stats(request: Request):
    ctx = ctx_of(request)
    ctx.store.reset_stats()
    return jobstats.stats(ctx.store, ctx.dbs.provisioning)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="One job")
def get_job(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    job = ctx_of(request).dbs.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return _out(job)
