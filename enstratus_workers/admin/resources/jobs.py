"""``/jobs``: submit a job (through ``enstratus_workers.jobs.submit``, the one way in), list jobs
(filtered by status, action, queue, account or id) and read them, and the counts by status with
their reset.

The arguments are stored as strict JSON (``StrictBody`` refused anything else before this runs);
jobs are answered through ``printable``, so a row stored with bad text by anything else is still
shown (with replacement characters) instead of failing the whole listing.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from enstratus_workers.jobs.submit import SubmitError, new_job

from ... import strictjson
from ...db.instances import Conflict, NotFound
from ...db.job_search import JobFilter, find_jobs
from ...jobs import lifecycle
from ...jobs.submit import cancel
from ...db.schema import STATUSES, TERMINAL
from .. import jobstats
from ..auditing import audited
from ..context import ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND, invalid
from ..models import (ACCOUNT_MAX, ACCOUNT_PATTERN, ACTION_PATTERN, MAX_BULK_JOBS, QUEUE_PATTERN, JobIn, JobOut,
                      JobStats, SubmitOut)
from ..outcome_watch import MAX_WAITS, WAIT_MAX_S, OutcomeWatch, TooManyWaits
from ..strictbody import SafeJSONResponse, printable
from ..submitter import Submitter

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=COMMON)

Status = Literal[STATUSES]  # type: ignore[valid-type]


def _out(job) -> JobOut:
    return JobOut(**printable(job.as_dict()))


_JOB_LIST = TypeAdapter(list[JobIn])
_BODY_DOC = (f"One job, or a list of up to {MAX_BULK_JOBS}: a list's jobs without an idempotency key "
             "are stored in one transaction, after all were validated (one invalid job refuses the "
             "whole list, naming it); keyed ones one by one.")


@router.post("", response_model=Union[SubmitOut, list[SubmitOut]], status_code=201,
             responses={200: {"model": SubmitOut, "description": "the idempotency key named an earlier job"}},
             summary="Submit a job, or a list of jobs (stored pending; the publisher relays them)",
             openapi_extra={"requestBody": {"required": True, "description": _BODY_DOC, "content": {
                 "application/json": {"schema": {"oneOf": [
                     {"$ref": "#/components/schemas/JobIn"},
                     {"type": "array", "items": {"$ref": "#/components/schemas/JobIn"},
                      "minItems": 1, "maxItems": MAX_BULK_JOBS}]}}}}})
async def submit_job(request: Request, response: Response, body: Any = Body(default=None)):
    # Validated here rather than by declaring Union[JobIn, list[JobIn]]: a single job's errors
    # keep the shape they always had (loc ["body", "max_attempts"], not ["body", "JobIn", ...]).
    # An async route: the body is parsed on the event loop, and a plain single job is stored by
    # the app's submitter thread with the others that came meanwhile (admin/submitter.py);
    # lists and keyed jobs, rarer, take a thread of the pool as the other routes do.
    ctx = ctx_of(request)
    if isinstance(body, list):
        if not 1 <= len(body) <= MAX_BULK_JOBS:
            raise invalid(f"a list of 1 to {MAX_BULK_JOBS} jobs, not {len(body)}", "body")
        return await run_in_threadpool(_submit_list, ctx, _parsed(_JOB_LIST.validate_python, body))
    one = _parsed(JobIn.model_validate, body)
    if one.idempotency_key is None:
        return created_answer(await submitter_of(request.app).submit(one))
    job, created = await run_in_threadpool(lambda: ctx.dbs.jobs.submit(_validated(ctx, [one])[0]))
    if not created:
        response.status_code = 200
    return SubmitOut(created=created, job=_out(job))


_JOB_FIELDS = tuple(JobOut.model_fields)


def created_answer(job) -> SafeJSONResponse:
    """The 201 answer to a single job stored: what FastAPI makes of ``SubmitOut(created=True,
    job=_out(job))`` through the route's response model (a job's fields in ``JobOut``'s order;
    ``SafeJSONResponse`` makes its text printable), without building and checking the models:
    the one answer sent once per job when jobs come one at a time (``admin/submitlane.py``)."""
    fields = job.as_dict()
    return SafeJSONResponse({"created": True, "job": {k: fields[k] for k in _JOB_FIELDS}}, status_code=201)


def submitter_of(app) -> Submitter:
    """The app's submitter (made on first use, so every app built has its own)."""
    state = app.state
    found = getattr(state, "submitter", None)
    if found is None:
        ctx = state.ctx
        found = state.submitter = Submitter(lambda bodies: _validated_each(ctx, bodies), ctx.dbs.jobs.submit_jobs)
    return found


def _validated_each(ctx, bodies: list[JobIn]) -> list:
    """Each body's ``NewJob``, or the exception that refused it (the submitter's ``validate``)."""
    out, cached = [], None
    for b in bodies:
        try:
            cached = cached or ctx.submit_settings()   # one copy for the batch: each is a new one
            out.append(_validated(ctx, [b], cached)[0])
        except Exception as exc:  # noqa: BLE001 - this job's own answer (422, or 503 from a read)
            out.append(exc)
    return out


def _parsed(validate, body):
    try:
        return validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _new_job(settings, ctx, body: JobIn, where: str = ""):
    try:
        arguments = strictjson.dumps(body.arguments)
    except strictjson.NotStrictJSON as exc:
        raise invalid(f"{where}{exc}", "body", "arguments") from None
    try:
        return new_job(settings, body.action, arguments, body.queue, idempotency_key=body.idempotency_key,
                       max_attempts=body.max_attempts, account=body.account, registry=ctx.registry)
    except SubmitError as exc:
        raise SubmitError(f"{where}{exc}") from None


def _validated(ctx, bodies: list[JobIn], cached=None):
    """The jobs, validated against the cached desired state (``cached``: its settings, already
    got); refused, once more against a fresh read (a queue created a moment ago, by this daemon
    or another host's)."""
    where = (lambda i: f"job {i}: ") if len(bodies) > 1 else (lambda i: "")
    try:
        settings = cached or ctx.submit_settings()
        return [_new_job(settings, ctx, b, where(i)) for i, b in enumerate(bodies)]
    except SubmitError:
        settings = ctx.submit_settings(fresh=True)
        return [_new_job(settings, ctx, b, where(i)) for i, b in enumerate(bodies)]


def _submit_list(ctx, bodies: list[JobIn]) -> list[SubmitOut]:
    new = _validated(ctx, bodies)
    plain = iter(ctx.dbs.jobs.submit_jobs([j for j in new if not j.idempotency_key]))
    out = []
    for j in new:
        if j.idempotency_key:
            job, created = ctx.dbs.jobs.submit(j)
        else:
            job, created = next(plain), True
        out.append(SubmitOut(created=created, job=_out(job)))
    return out


def job_filter(status: Optional[Status] = Query(default=None, description="only jobs in this status"),
               action: Optional[str] = Query(default=None, pattern=ACTION_PATTERN, max_length=200,
                                             description="only jobs of this action"),
               queue: Optional[str] = Query(default=None, pattern=QUEUE_PATTERN, max_length=100,
                                            description="only jobs on this queue"),
               account: Optional[str] = Query(default=None, pattern=ACCOUNT_PATTERN, max_length=ACCOUNT_MAX,
                                              description="only jobs of this account"),
               job_id: Optional[int] = Query(default=None, ge=1, le=2**63 - 1,
                                             description="search by id: this job only")) -> JobFilter:
    """The filters of a jobs list (the API's and the Jobs page's), each checked: 422 naming it."""
    return JobFilter(status, action, queue, account, job_id)


@router.get("", response_model=list[JobOut], summary="The latest jobs, newest first, filtered")
def list_jobs(request: Request, where: JobFilter = Depends(job_filter),
              limit: int = Query(default=50, ge=1, le=500)):
    return [_out(j) for j in find_jobs(ctx_of(request).dbs.provisioning, where, limit)]


@router.get("/stats", response_model=JobStats, summary="Jobs by status, created since the last reset")
def job_stats(request: Request):
    ctx = ctx_of(request)
    return jobstats.stats(ctx.store, ctx.dbs.provisioning)


@router.post("/stats/reset", response_model=JobStats, summary="Count only jobs created from now on")
@audited("jobs.stats_reset", lambda a: "the Jobs page's counts", lambda ctx, a: {"since_ms": ctx.store.stats_since()})
def reset_job_stats(request: Request):
    ctx = ctx_of(request)
    ctx.store.reset_stats()
    return jobstats.stats(ctx.store, ctx.dbs.provisioning)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="One job",
            description="With `wait` (seconds, up to 60): answered as soon as the job has ended "
                        "(succeeded, failed, dead or cancelled), else after `wait` with the job as it "
                        "is then; woken by the recording of its outcome on any host, not by polling. "
                        f"503 with Retry-After when {MAX_WAITS} waits are on already.")
async def get_job(request: Request, job_id: int = Path(ge=1, le=2**63 - 1),
                  wait: float = Query(default=0, ge=0, le=WAIT_MAX_S,
                                      description="seconds to wait for the job to end (0: answer at once)")):
    ctx = ctx_of(request)
    if not wait:
        return _out(await run_in_threadpool(_existing, ctx, job_id))
    try:
        async with outcome_watch_of(request.app).watching(job_id) as outcome:
            job = await run_in_threadpool(_existing, ctx, job_id)   # read after the wait is registered
            if job.status not in TERMINAL:
                await outcome.wait(wait)
                job = await run_in_threadpool(_existing, ctx, job_id)
    except TooManyWaits as exc:
        raise HTTPException(503, f"too many waits at once ({exc}); try again", headers={"Retry-After": "1"}) from None
    return _out(job)


def _existing(ctx, job_id: int):
    job = ctx.dbs.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def outcome_watch_of(app) -> OutcomeWatch:
    """The app's watch of the outcomes its requests wait for (made on first use)."""
    state = app.state
    found = getattr(state, "outcome_watch", None)
    if found is None:
        ctx = state.ctx
        found = state.outcome_watch = OutcomeWatch(ctx.dbs.jobs.finished_among, ctx.layout.run_dir)
    return found


def job_state(ctx, arguments: dict) -> dict | None:
    """A job's state as the audit log keeps it before and after a change (not its arguments or
    result: they may be large, and the job's own row has them)."""
    job = ctx.dbs.jobs.get(arguments["job_id"])
    if job is None:
        return None
    return {k: getattr(job, k, None) for k in ("status", "attempts", "max_attempts", "cancel_requested_ms")
            if getattr(job, k, None) is not None}


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**NOT_FOUND, **CONFLICT},
             summary="Cancel a job: one not started ends cancelled now; a running one is asked to stop",
             description="200 with the job: `cancelled` if it had not started, else still `running` "
                         "with `cancel_requested_ms` set (its action is told, killed after "
                         "action.cancel_grace, its compensation runs, then it ends `cancelled`). "
                         "404 if there is no such job; 409 if it had finished (nothing changed).")
@audited("job.cancel", lambda a: f"job {a['job_id']}", job_state)
def cancel_job(request: Request, job_id: int = Path(ge=1, le=2**63 - 1)):
    answer = cancel(ctx_of(request).dbs, job_id)
    if answer.job is None:
        raise NotFound(f"no job {job_id}")
    if answer.verdict == lifecycle.CANCEL_FINISHED:
        raise Conflict(f"job {job_id} has already finished ({answer.job.status}); nothing was cancelled")
    return _out(answer.job)
