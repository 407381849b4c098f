"""Who may call the admin daemon: whoever bears its token, and the pages of whoever logged in.

Two credentials, for two kinds of client:

- **The bearer token** (``Authorization: Bearer <token>``): scripts, curl, monitoring. Good on
  every route. Wrong tokens are counted per client address (``throttle``): after a few, 429.
- **The session cookie** (set by the login form, see ``sessions``): the pages only. Its path is
  ``/ui``, where the pages, their fragments and the few API calls the pages make
  (``/ui/api/...``) live, so a browser sends it nowhere else, and the JSON API under ``/`` ignores
  it even when sent. It is ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict``, and
  never good for a request that carries neither ``Origin`` nor ``Sec-Fetch-Site`` (see ``gate``):
  a change comes either from our own page or from a holder of the token.

Token comparisons are constant-time. Whoever passes is named for the audit log
(``request.state.actor``, see ``auditing``): ``token:<fingerprint>`` or ``session:<short id>``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..config.settings import Secret
from .gate import is_scripted
from .sessions import session_digest

COOKIE = "enstratus_admin"
COOKIE_PATH = "/ui"

bearer_scheme = HTTPBearer(auto_error=False, description="the admin token (admin.token or admin.cfg)")

_NO_TOKEN = ("missing or wrong token: send 'Authorization: Bearer <token>' "
             "(the token is in services/worker/run/admin.token unless admin.cfg sets one)")


class Tokens:
    """The token, compared in constant time."""

    def __init__(self, token: Secret):
        self._token = token.reveal().encode("utf-8")
        # who bore it, in the audit log: 32 bits of its digest tell tokens apart, and give
        # nothing a reader could use
        self.actor = "token:" + hashlib.sha256(self._token).hexdigest()[:8]

    def token_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(
            candidate.encode("utf-8", "replace"), self._token)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def check_token(request: Request, candidate: str) -> bool:
    """Whether ``candidate`` is the token; counted against the client's address either way, and
    429 with ``Retry-After`` (the token not even looked at) while the address is locked out."""
    state = request.app.state
    address = client_address(request)
    wait = state.throttle.retry_after(address)
    if wait:
        raise HTTPException(status_code=429, detail=f"too many wrong tokens from {address}: "
                            f"try again in {wait} s", headers={"Retry-After": str(wait)})
    if state.tokens.token_ok(candidate):
        state.throttle.succeeded(address)
        return True
    state.throttle.failed(address)
    return False


def bearer_passes(state, address: str, authorization: str | None) -> bool:
    """Whether ``authorization`` (the header's value, as ``HTTPBearer`` reads it) bears the right
    token from an address not locked out; the success counted. False for anything else, counting
    nothing: the caller then hands the request to ``require_token``, which answers and counts it
    (``submitlane``)."""
    credentials = bearer_of(authorization)
    if not credentials or state.throttle.retry_after(address):
        return False
    if not state.tokens.token_ok(credentials):
        return False
    state.throttle.succeeded(address)
    return True


def bearer_of(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header's value bears (``Bearer <token>``); None if another scheme."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def page_session_ok(request: Request) -> bool:
    """For everything under ``/ui``: the token, else (from a browser page) an open session."""
    token = bearer_of(request.headers.get("authorization"))
    if token is not None:
        return _as_token_bearer(request, check_token(request, token))
    if is_scripted(request.scope):
        return False
    session = request.cookies.get(COOKIE)
    if not request.app.state.sessions.use(session):
        return False
    request.state.actor = session_actor(session)
    return True


def session_actor(session_id: str) -> str:
    """The audit log's name of a session: the start of the digest it is kept under."""
    return "session:" + session_digest(session_id)[:8]


def _as_token_bearer(request: Request, ok: bool) -> bool:
    if ok:
        request.state.actor = request.app.state.tokens.actor
    return ok


def unauthorized(detail: str = _NO_TOKEN) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def require_token(request: Request,
                        creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer_scheme)) -> None:
    """The dependency of every JSON API route: 401 unless the bearer token is presented.

    Async, as ``require_page_session``: both only compare in memory (under locks held for a
    lookup), and FastAPI runs a sync dependency in a pool thread, a round trip between the event
    loop and a thread on every request for no I/O at all."""
    if creds is None or not _as_token_bearer(request, check_token(request, creds.credentials)):
        raise unauthorized()


async def require_page_session(request: Request) -> None:
    """The dependency of the API calls the pages make (``/ui/api/...``)."""
    if not page_session_ok(request):
        raise unauthorized("log in again")
