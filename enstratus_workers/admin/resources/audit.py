"""``/audit``: the audit log of operator actions (``db/audit.py``), newest first, a page at a time.

Paging is by cursor: each page says ``next_before``, the id to pass as ``before`` for the page
after it (older rows), or null on the last page; rows written meanwhile never shift a page.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..context import ctx_of
from ..errors import COMMON

router = APIRouter(prefix="/audit", tags=["audit"], responses=COMMON)

#: an action's name in the log: dotted lower-case words (``instance.start``, ``job.retry``)
AUDIT_ACTION_PATTERN = r"^[a-z_]{1,30}(\.[a-z_]{1,30}){0,2}$"


class AuditOut(BaseModel):
    audit_id: int
    at_ms: int = Field(description="when, ms since the epoch")
    actor: str = Field(description="token:<fingerprint>, session:<id> or cli:<unix user>")
    via: str = Field(description="api, page or cli")
    client: Optional[str] = Field(description="the client's address (the host, for the CLI)")
    action: str
    target: Optional[str]
    status: int = Field(description="the HTTP status of the answer, or the CLI's exit code")
    detail: Optional[str] = Field(description="why it was refused")
    before_state: Any = Field(description="the target before, where cheap to read")
    after_state: Any = Field(description="the target after")


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next_before: Optional[int] = Field(description="pass as 'before' for the next (older) page; null: none")


def audit_page(request: Request, action: Optional[str], before: Optional[int], limit: int) -> AuditPage:
    """One page of the log (also the audit page's)."""
    rows = ctx_of(request).audit.page(action=action, before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(entries=[AuditOut(**r.as_dict()) for r in rows],
                     next_before=rows[-1].audit_id if more else None)


@router.get("", response_model=AuditPage, summary="Operator actions, newest first, a page at a time")
def list_audit(request: Request,
               action: Optional[str] = Query(default=None, pattern=AUDIT_ACTION_PATTERN, max_length=64,
                                             description="only this action, e.g. instance.start"),
               before: Optional[int] = Query(default=None, ge=1, le=2**63 - 1,
                                             description="rows older than this id (the previous page's next_before)"),
               limit: int = Query(default=50, ge=1, le=500)):
    return audit_page(request, action, before, limit)
