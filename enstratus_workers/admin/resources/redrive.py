"""``/jobs/dead/retry`` and ``/jobs/{id}/retry``: re-drive dead jobs, as the CLI's ``dead retry``
does, through the same function (``jobs/redrive.py``): another round of attempts, relayed by the
publisher, their dead letters purged. Both are recorded in the audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from ...db.instances import Conflict, NotFound
from ...db.job_search import JobFilter, count_jobs
from ...jobs import lifecycle
from ...jobs.redrive import redrive
from ..auditing import audited
from ..context import AdminContext, ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND
from ..models import JobOut
from ..strictbody import printable
from .jobs import job_state

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=COMMON)


class RedriveOut(BaseModel):
    redriven: list[int] = Field(description="the jobs made pending again")
    dead_letters_kept: str | None = Field(
        default=None, description="why their dead letters could not be purged (the queue was away)")


def _redrive(ctx: AdminContext, job_ids: list[int] | None):
    return redrive(ctx.dbs.jobs, ctx.queues.purge_dead, ctx.settings.worker.max_attempts, job_ids)


def _dead_count(ctx: AdminContext, _arguments: dict) -> dict:
    return {"dead": count_jobs(ctx.dbs.provisioning, JobFilter(status=lifecycle.DEAD))}


# declared before /{job_id}/retry, which would otherwise take "dead" for an id (and refuse it)
@router.post("/dead/retry", response_model=RedriveOut, summary="Re-drive every dead job")
@audited("jobs.retry_dead", lambda a: "every dead job", _dead_count)
def retry_dead_jobs(request: Request):
    done = _redrive(ctx_of(request), None)
    return RedriveOut(redriven=done.job_ids, dead_letters_kept=done.purge_error)


@router.post("/{job_id}/retry", response_model=JobOut, responses={**NOT_FOUND, **CONFLICT},
             summary="Re-drive a dead job: another round of attempts")
@audited("job.retry", lambda a: f"job {a['job_id']}", job_state)
def retry_job(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    ctx = ctx_of(request)
    job = ctx.dbs.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.status != lifecycle.DEAD:
        raise Conflict(f"job {job_id} is {job.status}, not dead: only a dead job is re-driven")
    if not _redrive(ctx, [job_id]).jobs:   # another re-drive (or retention) came first
        raise Conflict(f"job {job_id} is no longer dead")
    return JobOut(**printable(ctx.dbs.jobs.get(job_id).as_dict()))
