"""How failures become HTTP answers, in one place, so every route says them the same way.

Request bodies that fail validation get FastAPI's 422 (a list of ``{loc, msg, type}``); the
store's and ``submit``'s own refusals of a value use that same shape, so a client handles one
format. The rest is ``{"detail": "..."}``: 404 no such thing, 409 the change contradicts the
stored state, 503 the database or the queue cannot be reached right now (nothing was changed).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from enstratus_workers.jobs.submit import SubmitError

from ..db.instances import Conflict, Invalid, NotFound
from ..errors import DatabaseError, TransportError
from .models import Message
from .strictbody import SafeJSONResponse

log = logging.getLogger(__name__)

#: the error answers every API route may give, for the OpenAPI spec
COMMON = {401: {"model": Message, "description": "missing or wrong token"},
          429: {"model": Message, "description": "too many wrong tokens from this address: see Retry-After"},
          503: {"model": Message, "description": "the database or the queue is unreachable; nothing changed"}}
NOT_FOUND = {404: {"model": Message, "description": "no such instance, queue or job"}}
CONFLICT = {409: {"model": Message, "description": "contradicts the stored state; nothing changed"}}


#: the status each of the service's own refusals is answered with (by the handlers below); the
#: audit log records it for an action refused so
_STATUS_OF = ((NotFound, 404), (Conflict, 409), (Invalid, 422), (SubmitError, 422), (TransportError, 503),
              (DatabaseError, 503), (sa.exc.OperationalError, 503), (sa.exc.InterfaceError, 503))


def status_of(exc: BaseException) -> int:
    """The HTTP status the app answers ``exc`` with."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return next((status for kind, status in _STATUS_OF if isinstance(exc, kind)), 500)


def invalid(message: str, *loc: str) -> HTTPException:
    """A 422 in the shape of FastAPI's validation errors."""
    return HTTPException(status_code=422, detail=[{"loc": list(loc) or ["body"], "msg": message,
                                                   "type": "value_error"}])


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).splitlines()[0][:200] if str(inner) else ""
    return f"{type(inner).__name__}: {text}"


def install(app: FastAPI) -> None:
    """Register the handlers that map the service's exceptions to answers."""

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_request: Request, exc: RequestValidationError):
        # FastAPI's own answer, but one that can be sent whatever input it quotes back
        return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Invalid)
    async def _invalid(_request: Request, exc: Invalid):
        return JSONResponse({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
                            status_code=422)

    @app.exception_handler(SubmitError)
    async def _submit(_request: Request, exc: SubmitError):
        return JSONResponse({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
                            status_code=422)

    @app.exception_handler(TransportError)
    async def _queue_down(_request: Request, exc: TransportError):
        log.warning("queue unavailable: %s", exc)
        return JSONResponse({"detail": f"the queue is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(DatabaseError)
    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def _db_down(_request: Request, exc: Exception):
        log.warning("database unavailable: %s", _reason(exc))
        return JSONResponse({"detail": f"the database is unavailable: {_reason(exc)}"}, status_code=503)
