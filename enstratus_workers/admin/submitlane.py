"""The short way through the admin app for its most frequent request: ``POST /jobs`` with one job.

Sent one job per request (what a client does when its jobs come one at a time), each request
crossed a dozen layers of FastAPI (routing through the nested routers, the dependency solver, the
response model checked again, the JSON read twice), most of the admin daemon's CPU per job. This
ASGI layer, the innermost of the app's own (after ``Guard``, ``Gate`` and ``StrictBody``, so the
body cap, the Host and Origin checks, the strict JSON and the log of changes all still apply),
answers such a request itself when all of this holds:

- the bearer token is the right one and its address is not locked out (``auth.bearer_passes``);
- the body is a JSON object (content type JSON), valid as a ``JobIn``, without an idempotency key.

The job then goes to the app's submitter, as the route would send it, and its answer is the
route's own (``resources.jobs.created_answer``); a refusal from the submitter is answered by
the app's exception handler for it, as the route's would be. Anything else (a list, a keyed job,
an invalid body, a missing or wrong token, another path or method) goes on to FastAPI untouched,
the body replayed: the route answers it as it always did (a wrong token is counted there, once),
and the OpenAPI spec still comes from that route.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .auth import bearer_passes
from .guard import read_body, replaying
from .models import JobIn
from .resources.jobs import created_answer, submitter_of
from .strictbody import is_json


class SubmitLane:
    """ASGI middleware: single, unkeyed ``POST /jobs`` answered without FastAPI's layers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != "/jobs"
                or scope.get("query_string")):
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name, value)          # the first, as Starlette's Request.headers.get
        content_type = headers.get(b"content-type")
        authorization = headers.get(b"authorization")
        app = scope["app"]
        if (content_type is None or not is_json(content_type) or authorization is None
                or not bearer_passes(app.state, (scope.get("client") or ("?",))[0], authorization.decode("latin-1"))):
            return await self.app(scope, receive, send)
        body = await read_body(receive)   # Guard, outside, has capped it
        if body is None:
            return  # the client left
        one = _one_job(body)
        if one is None:
            # bearer_passes counted a success, which the route's require_token counts again: a no-op
            return await self.app(scope, replaying(body, receive), send)
        try:
            response = created_answer(await submitter_of(app).submit(one))
        except Exception as exc:  # noqa: BLE001 - answered as the route's would be, or raised as there
            response = await _handled(app, scope, receive, exc)
        await response(scope, receive, send)


def _one_job(body: bytes) -> JobIn | None:
    """The body's job if it is one valid object without an idempotency key; None otherwise."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        value = json.loads(body)
        one = JobIn.model_validate(value)
    except (ValueError, ValidationError, RecursionError):
        return None
    return one if isinstance(value, dict) and one.idempotency_key is None else None


async def _handled(app, scope, receive, exc: Exception):
    """The app's answer to ``exc`` (its exception handler, found as Starlette finds it), or ``exc``
    raised again when it has none (then the server's 500, as for the route)."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            request = Request(scope, receive)
            if asyncio.iscoroutinefunction(handler):
                return await handler(request, exc)
            return await run_in_threadpool(handler, request, exc)
    raise exc
