"""Every change made through the admin daemon goes into the audit log (``db/audit.py``), by
declaration: a route that changes something is decorated with ``@audited(...)`` and does
nothing else for it.

The decorator wraps the route function (FastAPI still sees its signature through
``__wrapped__``), so it knows the route's arguments, and it runs for the JSON API and for the
pages' calls of the same function under ``/ui/api`` alike (``via`` says which). Before the
route runs it reads the target's state (when the route declares how: cheap reads only), then
records the answer: the status (the route's own, or the one its refusal is answered with),
why it was refused, and the state after. Who (``request.state.actor``) was set by the
authorization the router ran first (``auth``).

The row is written after the change, in its own transaction; if that write fails the change
stands and is answered, and the daemon logs the lost row at ERROR with everything it held.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from typing import Any, Callable

from fastapi import Request

from ..clock import now_ms
from ..db.audit import AuditEntry, state_text
from ..db.instances import NotFound
from .auth import COOKIE_PATH, client_address
from .context import AdminContext, ctx_of
from .errors import status_of

log = logging.getLogger(__name__)

#: ``target(arguments)``: what the action acts on, from the route's arguments (path and body)
Target = Callable[[dict], str]
#: ``state(ctx, arguments)``: the target's state as JSON-ready data; None (or NotFound) if none
State = Callable[[AdminContext, dict], Any]


def audited(action: str, target: Target, state: State | None = None):
    """Record every call of the decorated route as ``action`` on ``target``, with ``state``
    before and after. The route must take ``request``."""

    def decorate(endpoint):
        if "request" not in inspect.signature(endpoint).parameters:
            raise TypeError(f"{endpoint.__name__}: an audited route must take the request")

        @functools.wraps(endpoint)
        def audited_route(**arguments):
            request: Request = arguments["request"]
            ctx = ctx_of(request)
            before = _read(state, ctx, arguments)
            try:
                answer = endpoint(**arguments)
            except Exception as exc:
                record(request, action, target(arguments), status_of(exc), detail=_detail(exc), before=before)
                raise
            record(request, action, target(arguments), _status(request, arguments), before=before,
                   after=_read(state, ctx, arguments))
            return answer

        audited_route.audit_action = action
        return audited_route

    return decorate


def record(request: Request, action: str, target: str | None, status: int, *, detail: str | None = None,
           before: Any = None, after: Any = None, actor: str | None = None) -> None:
    """Write one row for an action taken through ``request`` (also used by the login form)."""
    path = request.url.path
    via = "page" if path.startswith(COOKIE_PATH + "/") or path == "/login" else "api"
    entry = AuditEntry(now_ms(), actor or getattr(request.state, "actor", "unknown"), via,
                       client_address(request), action, target, status, detail, state_text(before),
                       state_text(after))
    try:
        ctx_of(request).audit.record(entry)
    except Exception:
        log.error("could not write the audit row %s", json.dumps(entry.as_dict(), default=str), exc_info=True)


def _read(state: State | None, ctx: AdminContext, arguments: dict) -> Any:
    if state is None:
        return None
    try:
        return state(ctx, arguments)
    except NotFound:
        return None


def _status(request: Request, arguments: dict) -> int:
    """The status of a successful answer: set by the route on its ``response``, else declared."""
    response = arguments.get("response")
    if response is not None and response.status_code:
        return response.status_code
    route = request.scope.get("route")
    return getattr(route, "status_code", None) or 200


def _detail(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    if detail is None:
        return str(exc)
    return detail if isinstance(detail, str) else json.dumps(detail, default=str)
