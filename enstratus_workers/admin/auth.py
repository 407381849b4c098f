"""Who may call the admin daemon: whoever bears its token.

Two ways to bear it: an ``Authorization: Bearer <token>`` header (scripts, curl, monitoring), or
the session cookie the login form sets (the pages). The cookie holds an HMAC of the token rather
than the token itself, so a cookie that leaks from a browser profile does not give away the token
scripts use; it is ``HttpOnly`` (page scripts cannot read it) and ``SameSite=Strict`` (another
site cannot make the browser send it along with a forged request). Changing the token ends every
session. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from ..config.settings import Secret

COOKIE = "enstratus_admin"
COOKIE_MAX_AGE = 12 * 3600  # a forgotten browser tab stops being logged in overnight
_SESSION_LABEL = b"enstratus-workers admin session v1"

bearer_scheme = HTTPBearer(auto_error=False, description="the admin token (admin.token or admin.cfg)")
cookie_scheme = APIKeyCookie(name=COOKIE, auto_error=False, description="set by POST /login")


class Tokens:
    """The token and the session value derived from it."""

    def __init__(self, token: Secret):
        self._token = token.reveal().encode("utf-8")
        self.session = hmac.new(self._token, _SESSION_LABEL, hashlib.sha256).hexdigest()

    def token_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode("utf-8"), self._token)

    def session_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode("utf-8"),
                                                             self.session.encode("ascii"))

    def request_ok(self, request: Request) -> bool:
        """For the pages, which answer a stranger with the login form instead of an error."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return True
        return self.session_ok(request.cookies.get(COOKIE))


def tokens_of(request: Request) -> Tokens:
    return request.app.state.tokens


def require_token(request: Request,
                  creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer_scheme),
                  session: Optional[str] = Depends(cookie_scheme)) -> None:
    """The dependency of every API route: 401 unless the token (or a session of it) is presented."""
    tokens = tokens_of(request)
    if creds is not None and tokens.token_ok(creds.credentials):
        return
    if tokens.session_ok(session):
        return
    raise HTTPException(status_code=401, detail="missing or wrong token: send 'Authorization: Bearer <token>' "
                        "(the token is in services/worker/run/admin.token unless admin.cfg sets one)",
                        headers={"WWW-Authenticate": "Bearer"})
