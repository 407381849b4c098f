"""Pausing and resuming queues and accounts, fleet-wide: their jobs wait in the outbox.

``POST /queues/{name}/pause`` and ``/resume``, ``POST /accounts/{account}/pause`` and
``/resume`` (each answers the pause as it now stands: kind, name, paused, since_ms), and
``GET /pauses``. Through ``db/pauses.py``, the store the CLI uses too: a queue must be one the
fleet knows (else 404), an account a valid account name (else 422 naming it); pausing what is
paused, or resuming what is not, changes nothing and answers the same.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from ...db.instances import Invalid
from ...db.pauses import ACCOUNT, QUEUE, fleet_pauses
from ..auditing import audited
from ..context import ctx_of
from ..errors import COMMON, NOT_FOUND, invalid
from ..models import QUEUE_PATTERN, PauseOut

router = APIRouter(tags=["pauses"], responses=COMMON)

QueueParam = Path(pattern=QUEUE_PATTERN, max_length=100, description="a queue name")
# checked by the store, whose 422 names the account and the rule
AccountParam = Path(max_length=400, description="an account name (percent-encoded in the path)")
INVALID = {422: {"description": "not a valid name"}}


def _pauses(request: Request):
    return fleet_pauses(ctx_of(request).dbs)


def _audited(verb: str, kind: str, key: str):
    """Audited as ``<kind>.<verb>`` (``queue.pause`` ...) of the name in path parameter ``key``,
    with its pause before and after."""
    return audited(f"{kind}.{verb}", lambda a: f"{kind} {a[key]}",
                   lambda ctx, a: fleet_pauses(ctx.dbs).get(kind, a[key]).as_dict())


def _change(request: Request, verb: str, kind: str, name: str) -> PauseOut:
    store = _pauses(request)
    try:
        done = store.pause(kind, name) if verb == "pause" else store.resume(kind, name)
    except Invalid as exc:
        raise invalid(str(exc), "path", "account" if kind == ACCOUNT else "name") from None
    return PauseOut(**done.as_dict())


@router.post("/queues/{name}/pause", response_model=PauseOut, responses=NOT_FOUND,
             summary="Pause a queue: its jobs wait in the outbox, on every host")
@_audited("pause", QUEUE, "name")
def pause_queue(request: Request, name: str = QueueParam):
    return _change(request, "pause", QUEUE, name)


@router.post("/queues/{name}/resume", response_model=PauseOut, responses=NOT_FOUND,
             summary="Resume a queue: its jobs are relayed again")
@_audited("resume", QUEUE, "name")
def resume_queue(request: Request, name: str = QueueParam):
    return _change(request, "resume", QUEUE, name)


@router.post("/accounts/{account}/pause", response_model=PauseOut, responses=INVALID,
             summary="Pause an account: its jobs wait in the outbox, on every host")
@_audited("pause", ACCOUNT, "account")
def pause_account(request: Request, account: str = AccountParam):
    return _change(request, "pause", ACCOUNT, account)


@router.post("/accounts/{account}/resume", response_model=PauseOut, responses=INVALID,
             summary="Resume an account: its jobs are relayed again")
@_audited("resume", ACCOUNT, "account")
def resume_account(request: Request, account: str = AccountParam):
    return _change(request, "resume", ACCOUNT, account)


@router.get("/pauses", response_model=list[PauseOut], summary="What is paused, queues first")
def list_pauses(request: Request):
    return [PauseOut(**p.as_dict()) for p in _pauses(request).list()]
